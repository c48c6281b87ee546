"""Drift: covariate (the sensors read shifted values) and concept (what a reading means changes)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from simulators.events import Event, event

if TYPE_CHECKING:
    from simulators.fleet import FleetRun


class _DriftEvent(Event):
    after_rollouts: bool = Field(
        default=False,
        description="Wait first for the timeline's rollouts that fired before it to end (and their"
        " devices to finish their updates): the drift then hits the version the fleet settled on",
    )


async def _after_rollouts(run: FleetRun, spec: _DriftEvent) -> str:
    """Waits when the event says so; what to add to its line (when it hit, if it waited)."""
    if not spec.after_rollouts:
        return ""
    # Rollouts hold the lock one after another, in the order they fired (asyncio.Lock is fair):
    # once this event holds it, every rollout that fired before it has ended.
    async with run.rollout_lock:
        pass
    return f" (at {run.elapsed():.0f}s, once the rollouts before it had ended)"


class Drift(_DriftEvent):
    shift: float = Field(default=1.5, description="Shift along the drift direction, in noise units")


@event("drift", Drift)
async def drift(run: FleetRun, spec: Drift) -> str:
    """The site's sensors read shifted values from now on (covariate drift)."""
    waited = await _after_rollouts(run, spec)
    sites = run.sites_for(spec.site)
    for site in sites:
        site.drift_shift = spec.shift
        site.drifted_at = run.elapsed() if site.drifted_at is None else site.drifted_at
        await run.set_sources(run.devices_of(site), extra_drift=spec.shift)
    if run.drift_started_at is None:
        run.drift_started_at = run.elapsed()
    return f"{', '.join(s.name for s in sites)} sensors drift by {spec.shift}{waited}"


class ConceptDrift(_DriftEvent):
    swap: tuple[int, int] = Field(default=(1, 2), description="Two classes whose meaning is exchanged")


@event("concept_drift", ConceptDrift)
async def concept_drift(run: FleetRun, spec: ConceptDrift) -> str:
    """Two classes exchange meaning at the site from now on: inputs unchanged, labels tell."""
    waited = await _after_rollouts(run, spec)
    a, b = spec.swap
    sites = run.sites_for(spec.site)
    for site in sites:
        site.relabel = {a: b, b: a}
        site.drifted_at = run.elapsed() if site.drifted_at is None else site.drifted_at
        await run.set_sources(run.devices_of(site), relabel=site.relabel)
    if run.drift_started_at is None:
        run.drift_started_at = run.elapsed()
    return (
        f"{', '.join(s.name for s in sites)}: classes {a} and {b} exchange meaning (inputs unchanged){waited}"
    )
