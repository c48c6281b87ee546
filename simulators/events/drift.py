"""Drift: covariate (the sensors read shifted values) and concept (what a reading means changes)."""

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
    if run.drift_started_at is None:
        run.drift_started_at = run.elapsed()
    return f"{', '.join(s.name for s in sites)} sensors drift by {spec.shift}"


class ConceptDrift(Event):
    swap: tuple[int, int] = Field(default=(1, 2), description="Two classes whose meaning is exchanged")


@event("concept_drift", ConceptDrift)
async def concept_drift(run: FleetRun, spec: ConceptDrift) -> str:
    a, b = spec.swap
    sites = run.sites_for(spec.site)
    for site in sites:
        site.relabel = {a: b, b: a}
        for device in run.devices_of(site):
            run.sources[device].relabel = site.relabel
    if run.drift_started_at is None:
        run.drift_started_at = run.elapsed()
    return f"{', '.join(s.name for s in sites)}: classes {a} and {b} exchange meaning (inputs unchanged)"
