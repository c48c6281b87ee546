"""Device faults: churn (leave, reboot, join) and a full disk."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from pydantic import Field

from simulators.events import Event, event

if TYPE_CHECKING:
    from simulators.fleet import FleetRun


class Churn(Event):
    leave: int = Field(default=1, ge=0, description="Devices that go away for for_s, then boot again")
    join: int = Field(default=1, ge=0, description="New devices that join and stay")


@event("device_churn", Churn)
async def device_churn(run: FleetRun, spec: Churn) -> str:
    """Devices leave and boot again after for_s with the same outbox; new devices join."""
    lines = []
    for site in run.sites_for(spec.site):
        leaving = run.devices_of(site)[: spec.leave]
        for device in leaving:
            await run.stop_agent(device)
        for _ in range(spec.join):
            await run.add_agent(site)
        lines.append(f"{site.name}: {len(leaving)} devices left, {spec.join} joined")
        await asyncio.sleep(spec.for_s)
        for device in leaving:
            await run.start_agent(site, device)  # a reboot: same device id, same outbox
    return "; ".join(lines) + f"; back after {spec.for_s:.0f}s"


class DiskFull(Event):
    devices: int = Field(default=1, ge=1, description="How many devices of the site")


@event("device_disk_full", DiskFull)
async def device_disk_full(run: FleetRun, spec: DiskFull) -> str:
    """The last devices of the site get a full disk (SQLITE_FULL in their outbox) for for_s."""
    hit = [d for site in run.sites_for(spec.site) for d in run.devices_of(site)[-spec.devices :]]
    await run.set_disk_limit(hit, 0)
    await asyncio.sleep(spec.for_s)
    await run.set_disk_limit(hit, None)
    return f"disk full on {', '.join(hit)} for {spec.for_s:.0f}s"
