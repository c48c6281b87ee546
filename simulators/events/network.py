"""Uplink faults, in the TCP proxy between each site's gateway and the controller."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from pydantic import Field

from simulators.events import Event, event

if TYPE_CHECKING:
    from simulators.fleet import FleetRun


@event("uplink_partition")
async def uplink_partition(run: FleetRun, spec: Event) -> str:
    """The site's uplink to the controller is cut for for_s (every connection reset, new ones too)."""
    sites = run.sites_for(spec.site)
    for site in sites:
        site.uplink.cut()
    await asyncio.sleep(spec.for_s)
    for site in sites:
        site.uplink.restore()
    return f"{', '.join(s.name for s in sites)} uplink cut for {spec.for_s:.0f}s"


class SlowLink(Event):
    latency_s: float = Field(default=0.2, ge=0, le=10, description="Added to each chunk, in each direction")
    loss: float = Field(default=0.05, ge=0, le=1, description="Share of chunks delayed by a retransmission")


@event("uplink_slow", SlowLink)
async def uplink_slow(run: FleetRun, spec: SlowLink) -> str:
    """The site's uplink gets latency and loss for for_s."""
    sites = run.sites_for(spec.site)
    for site in sites:
        site.uplink.set_latency(spec.latency_s)
        site.uplink.set_loss(spec.loss)
    await asyncio.sleep(spec.for_s)
    for site in sites:
        site.uplink.set_latency(0.0)
        site.uplink.set_loss(0.0)
    return (
        f"{', '.join(s.name for s in sites)} uplink slow ({spec.latency_s * 1000:.0f} ms,"
        f" {spec.loss:.0%} loss) for {spec.for_s:.0f}s"
    )
