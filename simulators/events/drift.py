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
    """The site's sensors read shifted values from now on (covariate drift)."""
    sites = run.sites_for(spec.site)
    for site in sites:
        site.drift_shift = spec.shift
        site.drifted_at = run.elapsed() if site.drifted_at is None else site.drifted_at
        await run.set_sources(run.devices_of(site), extra_drift=spec.shift)
    if run.drift_started_at is None:
        run.drift_started_at = run.elapsed()
    return f"{', '.join(s.name for s in sites)} sensors drift by {spec.shift}"


class ConceptDrift(Event):
    swap: tuple[int, int] = Field(default=(1, 2), description="Two classes whose meaning is exchanged")


@event("concept_drift", ConceptDrift)
async def concept_drift(run: FleetRun, spec: ConceptDrift) -> str:
    """Two classes exchange meaning at the site from now on: inputs unchanged, labels tell."""
    a, b = spec.swap
    sites = run.sites_for(spec.site)
    for site in sites:
        site.relabel = {a: b, b: a}
        site.drifted_at = run.elapsed() if site.drifted_at is None else site.drifted_at
        await run.set_sources(run.devices_of(site), relabel=site.relabel)
    if run.drift_started_at is None:
        run.drift_started_at = run.elapsed()
    return f"{', '.join(s.name for s in sites)}: classes {a} and {b} exchange meaning (inputs unchanged)"
