"""Gateway faults: kill -9 the site gateway's process and start it again."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from simulators.child_process import start_to_the_end
from simulators.events import Event, event

if TYPE_CHECKING:
    from simulators.fleet import FleetRun


@event("gateway_kill")
async def gateway_kill(run: FleetRun, spec: Event) -> str:
    """The site's edge-gateway is killed -9 and starts again after for_s on its store."""
    sites = run.sites_for(spec.site)
    for site in sites:
        await asyncio.to_thread(site.gateway.kill)
    await asyncio.sleep(spec.for_s)
    for site in sites:
        # To its end even when the run is cancelled: `close` must find the process it spawns.
        await start_to_the_end(site.gateway.start)
    return f"{', '.join(s.name for s in sites)} gateway killed -9, restarted after {spec.for_s:.0f}s"
