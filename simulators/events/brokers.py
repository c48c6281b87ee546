"""Site broker faults: a clean restart and a kill -9 (the broker keeps what its last autosave wrote)."""

from __future__ import annotations

import asyncio
import signal
from typing import TYPE_CHECKING

from simulators.child_process import start_to_the_end
from simulators.events import Event, event

if TYPE_CHECKING:
    from simulators.fleet import FleetRun


async def _down(run: FleetRun, spec: Event, sig: int) -> str:
    sites = run.sites_for(spec.site)
    for site in sites:
        await asyncio.to_thread(site.broker.stop, sig)
    await asyncio.sleep(spec.for_s)
    for site in sites:
        # To its end even when the run is cancelled: `close` must find the process it spawns.
        await start_to_the_end(site.broker.start)
    return f"{', '.join(s.name for s in sites)} broker down for {spec.for_s:.0f}s"


@event("broker_restart")
async def broker_restart(run: FleetRun, spec: Event) -> str:
    """The site's Mosquitto stops cleanly and starts again after for_s."""
    return await _down(run, spec, signal.SIGTERM)


@event("broker_kill")
async def broker_kill(run: FleetRun, spec: Event) -> str:
    """The site's Mosquitto is killed -9 (keeps its last autosave) and starts again after for_s."""
    return await _down(run, spec, signal.SIGKILL)
