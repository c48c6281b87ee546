"""Rollouts on the timeline: a new model version, or a defective one, sent to the fleet in waves with gates.

Each version is trained and built before the fleet streams (``prepare``: a retrained model for a
good rollout, a model with its defect built in for a bad one), uploaded to the controller's
registry, and rolled out through the controller's API when the event fires. Rollouts of a group
run one after another. For ``tampered_signature``, the release uploaded is good (the controller
checks signatures at upload), and a copy with its manifest edited after signing is planted in
every site gateway's bundle cache under the good bundle's address, as an attacker with the
gateway's disk would: the devices must refuse it.
"""

from __future__ import annotations

import asyncio
import os
import zlib
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from simulators.defects import DEFECTS
from simulators.events import Event, event
from simulators.learning import mark_production
from simulators.releases import MODEL_ID, Release, build_release, upload
from simulators.rollouts import RolloutOutcome, run_rollout

if TYPE_CHECKING:
    from simulators.fleet import FleetRun

_SEMVER = r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?$"
#: How long a rollout's devices get to finish their updates once it ended.
_SETTLE_S = 60.0
Defect = Literal["nan_outputs", "slow_10x", "disagrees", "tampered_signature"]
assert set(Defect.__args__) == set(DEFECTS)  # type: ignore[attr-defined]


class Gates(BaseModel):
    """A wave's gates, as the controller's rollout API takes them."""

    model_config = ConfigDict(extra="forbid")

    install_deadline_s: float = Field(default=300, gt=0, description="Installs later than this do not count")
    min_installed: float = Field(default=0.9, ge=0, le=1, description="Share on the version to advance")
    min_agreement: float = Field(default=0.9, ge=0, le=1, description="Shadow agreement below this fails")
    max_latency_ratio: float | None = Field(
        default=3.0, gt=0, description="p95 latency ratio above this fails"
    )
    max_failed: float = Field(
        default=0.2, ge=0, le=1, description="Share rolled back or refused above this fails"
    )


class Rollout(Event):
    version: str = Field(pattern=_SEMVER, description="The new version, trained and built in the run")
    waves: list[float] = Field(
        default_factory=lambda: [10.0, 50.0, 100.0],
        min_length=1,
        description="Cumulative percent of the group's devices after each wave",
    )
    soak_s: float = Field(default=5.0, ge=0, description="Seconds each wave holds its gates")
    shadow_s: float = Field(
        default=2.0, ge=0, description="Seconds devices run it in shadow before the switch"
    )
    gates: Gates = Field(
        default_factory=Gates,
        description="install_deadline_s (300), min_installed (0.9), min_agreement (0.9),"
        " max_latency_ratio (3.0), max_failed (0.2)",
    )
    group: str = Field(default="every-device", description="The device group (every device by default)")
    within_s: float = Field(default=300.0, gt=0, description="How long the run waits for the rollout to end")


class BadRollout(Rollout):
    defect: Defect = Field(description="nan_outputs, slow_10x, disagrees or tampered_signature")


def _seed(version: str) -> int:
    """Another seed per version: another model, the same recipe."""
    return 1 + zlib.crc32(version.encode()) % 10_000


async def _build(run: FleetRun, spec: Rollout) -> None:
    defect = getattr(spec, "defect", None)
    targets = sorted(set(run.scenario.runtimes))
    release = await asyncio.to_thread(
        build_release,
        run.run_dir / "releases" / spec.version,
        run.signing_key,
        targets,
        version=spec.version,
        seed=_seed(spec.version),
        defect=defect,
    )
    await asyncio.to_thread(upload, run.controller, release)
    run.releases[spec.version] = release


@event("rollout", Rollout, prepare=_build)
async def rollout(run: FleetRun, spec: Rollout) -> str:
    """A new model version (retrained, built, signed in the run) rolled out in waves with gates."""
    return await _roll(run, spec, None)


@event("bad_rollout", BadRollout, prepare=_build)
async def bad_rollout(run: FleetRun, spec: BadRollout) -> str:
    """A defective version rolled out like a good one: it must stop at its canary, devices back."""
    return await _roll(run, spec, spec.defect)


async def _roll(run: FleetRun, spec: Rollout, defect: str | None) -> str:
    release = run.releases[spec.version]
    outcome = RolloutOutcome(spec.kind, spec.version, defect, dict(release.uploaded))
    run.rollouts.append(outcome)
    note = ""
    async with run.rollout_lock:
        if defect == "tampered_signature":
            sites = await asyncio.to_thread(_plant, run, release)
            note = f"; tampered copies planted in the bundle caches of {', '.join(sites)}"
        body = {
            "model_id": MODEL_ID,
            "version": spec.version,
            "group": spec.group,
            "waves": [{"percent": percent} for percent in spec.waves],
            "soak_s": spec.soak_s,
            "shadow_s": spec.shadow_s,
            "gates": spec.gates.model_dump(),
        }
        await run_rollout(run.controller, outcome, body, within_s=spec.within_s)
        if run.scenario.learning is not None and defect is None and outcome.state == "succeeded":
            # The fleet runs it now: a job's candidate must beat it, not the version before.
            await asyncio.to_thread(_mark_production, run, spec.version)
            note += f"; {spec.version} marked production"
        # The next rollout waits for this one's devices to finish their updates: one that came
        # now would cancel them mid-way, and their outcome would never be known.
        busy = await run.settle_updates(_SETTLE_S, version=spec.version)
        if busy:
            note += f"; still mid-update after {_SETTLE_S:.0f}s: {', '.join(busy)}"
    return outcome.line() + note


def _mark_production(run: FleetRun, version: str) -> None:
    with run.controller.client("operator") as client:
        mark_production(client, version)


def _plant(run: FleetRun, release: Release) -> list[str]:
    """Write each tampered bundle into every site gateway's cache, under the good bundle's address."""
    for site in run.sites:
        for target, tampered in release.tampered.items():
            sha = release.uploaded[target]
            cached = site.gateway.cache_dir / sha
            cached.parent.mkdir(parents=True, exist_ok=True)
            part = cached.with_name(f".{sha}.planting")
            part.write_bytes(tampered.read_bytes())
            os.replace(part, cached)  # whole or absent: the gateway never serves half a file
            run.planted[site.name].add(sha)
    return [site.name for site in run.sites]
