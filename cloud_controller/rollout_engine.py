"""The rollout engine: a background task that judges each running rollout's current wave.

Per tick and running rollout: measure the wave (`rollout_gates.measure`) and `decide`: abort
(state failed) when a gate broke, advance when the installed share held ``soak_s`` at or above
``min_installed``, complete after the last wave, pause when the install deadline passed short of
it, hold otherwise. A decision is written with the rollout's new state in one transaction, only
if nobody changed the rollout since it was read (`rollouts.record`); everything lives in the
database, so a restarted controller resumes where it was, and a hold is written only when its
reason changes, so restarts and ticks do not repeat it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from cloud_controller import audit, rollouts
from cloud_controller.models import Deployment
from cloud_controller.rollout_gates import measure, reports
from cloud_controller.rollout_models import Action, GateValues, Rollout, RolloutState
from cloud_controller.waves import threshold
from fleet_protocol.pacing import wait_event

log = logging.getLogger(__name__)
ACTOR = "rollout-engine"

WAITING = "waiting for installs: the installed share is below min_installed"
SOAKING = "soaking: the installed share reached min_installed"


@dataclass(frozen=True)
class Verdict:
    action: Action
    reason: str
    #: When the wave's installed share reached min_installed (None: it has not, or no longer).
    reached_at: float | None = None


def decide(
    *, gates: dict[str, Any], soak_s: float, values: GateValues, wave: dict[str, Any], now: float
) -> Verdict:
    """What to do with a running wave, from its gate values: error conditions first."""
    if values.failed > gates["max_failed"]:
        return Verdict(
            Action.ABORT, f"failed share {values.failed:.1%} is above max_failed {gates['max_failed']:.1%}"
        )
    if values.agreement is not None and values.agreement < gates["min_agreement"]:
        return Verdict(
            Action.ABORT,
            f"mean shadow agreement {values.agreement:.1%} is below min_agreement "
            f"{gates['min_agreement']:.1%}",
        )
    ratio = gates.get("max_latency_ratio")
    if ratio is not None and values.latency_ratio is not None and values.latency_ratio > ratio:
        return Verdict(
            Action.ABORT,
            f"mean latency ratio {values.latency_ratio:.2f}x is above max_latency_ratio {ratio:.2f}x",
        )
    if values.non_finite > 0:
        return Verdict(Action.ABORT, f"the new model gave {values.non_finite} non-finite outputs in shadow")
    if values.installed >= gates["min_installed"]:
        reached = wave.get("reached_at") or now
        if now - reached >= soak_s:
            return Verdict(
                Action.ADVANCE,
                f"installed {values.installed:.1%} >= min_installed {gates['min_installed']:.1%} "
                f"for {soak_s:g} s",
                reached,
            )
        return Verdict(Action.HOLD, SOAKING, reached)
    if now > wave["clock"] + gates["install_deadline_s"]:
        return Verdict(
            Action.PAUSE,
            f"install deadline of {gates['install_deadline_s']:g} s passed with {values.installed:.1%} "
            f"installed, below min_installed {gates['min_installed']:.1%}",
        )
    return Verdict(Action.HOLD, WAITING)


class RolloutEngine:
    """Ticks every ``interval_s`` in a worker thread (the database calls block)."""

    def __init__(self, engine: Engine, *, interval_s: float, clock: Callable[[], float] = time.time) -> None:
        self.engine, self.interval_s, self.clock = engine, interval_s, clock

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until ``stop`` is set; a tick under way finishes first (a thread cannot be cancelled)."""
        while not stop.is_set():
            try:
                await asyncio.to_thread(self.tick)
            except Exception:  # the database may be away for a while: the next tick tries again
                log.exception("rollout engine tick failed")
            await wait_event(stop, self.interval_s)

    def tick(self) -> None:
        with Session(self.engine) as session:
            running = session.exec(select(Rollout.id).where(Rollout.state == RolloutState.RUNNING)).all()
        for rollout_id in running:
            try:
                self.step(rollout_id)
            except Exception:  # one rollout's error must not stop the others, nor the next tick
                log.exception("rollout %s: tick failed; trying again next tick", rollout_id)

    def step(self, rollout_id: str) -> Action | None:
        """Judge one rollout once; the action written, if any."""
        with Session(self.engine) as session:
            rollout = session.get(Rollout, rollout_id)
            if rollout is None or rollout.state != RolloutState.RUNNING:
                return None
            now = self.clock()
            devices = reports(session, rollout)
            wave = rollout.progress[rollout.current_wave]
            measured = measure(
                devices,
                threshold=int(wave["threshold"]),
                clock=wave["clock"],
                deadline_s=rollout.gates["install_deadline_s"],
            )
            verdict = decide(
                gates=rollout.gates, soak_s=rollout.soak_s, values=measured.gates, wave=wave, now=now
            )
            values = {**measured.gates.model_dump(), "devices": measured.devices}
            last = rollouts.last_decision(session, rollout.id)
            if verdict.action is Action.HOLD:
                same = (
                    last is not None
                    and (last.action, last.reason, last.wave)
                    == (Action.HOLD, verdict.reason, rollout.current_wave)
                    and wave.get("reached_at") == verdict.reached_at
                )
                if same:
                    return None
                progress = _with(rollout.progress, rollout.current_wave, reached_at=verdict.reached_at)
                return self._record(session, rollout, verdict, values, now, progress=progress)
            if verdict.action is Action.ADVANCE:
                return self._advance(session, rollout, verdict, values, devices, now)
            state = RolloutState.FAILED if verdict.action is Action.ABORT else RolloutState.PAUSED
            return self._record(session, rollout, verdict, values, now, state=state)

    def _advance(
        self,
        session: Session,
        rollout: Rollout,
        verdict: Verdict,
        values: dict[str, Any],
        devices: list[Any],
        now: float,
    ) -> Action | None:
        done = _with(rollout.progress, rollout.current_wave, reached_at=verdict.reached_at)
        following = rollout.current_wave + 1
        if following >= len(rollout.waves):
            complete = Verdict(Action.COMPLETE, f"{verdict.reason}; the last wave passed")
            return self._record(
                session,
                rollout,
                complete,
                values,
                now,
                then=lambda s: _deploy(s, rollout, now),
                state=RolloutState.SUCCEEDED,
                progress=done,
            )
        previous = int(done[-1]["threshold"])
        limit, target = threshold(rollout.waves[following], (d.position for d in devices), previous)
        started = {"threshold": limit, "target": target, "started_at": now, "clock": now, "reached_at": None}
        reason = f"{verdict.reason}; wave {following} starts with a target of {target} devices"
        return self._record(
            session,
            rollout,
            Verdict(Action.ADVANCE, reason),
            values,
            now,
            progress=[*done, started],
            current_wave=following,
        )

    def _record(
        self,
        session: Session,
        rollout: Rollout,
        verdict: Verdict,
        values: dict[str, Any],
        now: float,
        **changes: Any,
    ) -> Action | None:
        written = rollouts.record(
            session,
            rollout,
            action=verdict.action,
            reason=verdict.reason,
            values=values,
            actor=ACTOR,
            now=now,
            **changes,
        )
        if written and verdict.action is not Action.HOLD:
            log.info("rollout %s: %s (%s)", rollout.id, verdict.action.value, verdict.reason)
        return verdict.action if written else None


def _deploy(session: Session, rollout: Rollout, now: float) -> None:
    """The group's deployment becomes the new version, with the decision: every device of the group
    gets it, and desired state agrees once the rollout is no longer a layer."""
    deployment = Deployment(
        group_id=rollout.group_id,
        model_id=rollout.model_id,
        version=rollout.version,
        created_by=f"{ACTOR}:{rollout.id}",
        created_at=now,
    )
    session.add(deployment)
    session.flush()
    audit.record(
        session=session,
        actor=ACTOR,
        action="deploy",
        resource=f"deployment/{deployment.id}",
        after=audit.snapshot(deployment),
    )


def _with(progress: list[dict[str, Any]], index: int, **update: Any) -> list[dict[str, Any]]:
    """A copy of ``progress`` with one wave's entry updated (JSON columns change by assignment)."""
    return [{**wave, **update} if i == index else dict(wave) for i, wave in enumerate(progress)]
