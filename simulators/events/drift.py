"""Covariate drift: the sensors of a site start reading shifted values, and stay shifted."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from simulators.events import Event, event

if TYPE_CHECKING:
    from simulators.fleet import FleetRun


class Drift(Event):
    shift: float = Field(default=1.5, description="Shift along the drift direction, in noise units")


@event("drift", Drift)
async def drift(run: FleetRun, spec: Drift) -> str:
    sites = run.sites_for(spec.site)
    for site in sites:
        for device in run.devices_of(site):
            run.sources[device].extra_drift = spec.shift
        site.drift_shift = spec.shift
    run.drift_started_at = run.elapsed()
    return f"{', '.join(s.name for s in sites)} sensors drift by {spec.shift}"
