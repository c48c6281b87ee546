"""Device crashes: kill -9 of a site's agent processes, at once or at chosen points of an update.

A point (``download``, ``unpack``, ``verified``, ``shadow``, ``switch``, ``promoted``) is chosen
by the agents' own crash-point hook (`edge_agent.ota.hooks`), not by sleeping and hoping: the
process is armed, and the first of its devices to reach that point of a model update kills it,
every device in it going down mid-whatever it was doing. After ``for_s`` the same devices start
again on the same data folders (outboxes, model slots, update journals), and the next point of
the list is armed. ``now`` kills at once.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from simulators.events import Event, event

if TYPE_CHECKING:
    from simulators.agent_hosts import AgentHostProcess
    from simulators.fleet import FleetRun

Point = Literal["now", "download", "unpack", "verified", "shadow", "switch", "promoted"]


class AgentsKill(Event):
    at: list[Point] = Field(
        default_factory=lambda: ["now"],
        min_length=1,
        description="Kill -9 at each of these in turn: now, or when a device reaches that point of an update",
    )
    within_s: float = Field(default=120.0, gt=0, description="How long to wait for a point to be reached")


@event("agents_kill", AgentsKill)
async def agents_kill(run: FleetRun, spec: AgentsKill) -> str:
    """kill -9 of a site's agent processes (at once, or at points of an update), restarted on their data."""
    hosts = [host for site in run.sites_for(spec.site) for host in site.hosts]
    return "; ".join(await asyncio.gather(*(_kill_host(host, spec) for host in hosts)))


async def _kill_host(host: AgentHostProcess, spec: AgentsKill) -> str:
    done = []
    for point in spec.at:
        if point == "now":
            await host.kill()
        else:
            await host.arm(point)
            code = await host.wait_exit(spec.within_s)
            if code is None:
                await host.disarm()
                done.append(f"{point} not reached in {spec.within_s:.0f}s")
                continue
            if code != -9:
                done.append(f"exited with {code} before {point}")  # a crash: the run reports it
        await asyncio.sleep(spec.for_s)
        started = time.monotonic()
        running = await host.restart()
        done.append(f"killed at {point}, {running} devices back in {time.monotonic() - started:.1f}s")
    return f"agents {host.name}: {', '.join(done)}"
