"""Rollouts: create, list, read with status, pause / resume / abort, and the record of each decision."""

from __future__ import annotations

import secrets
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from cloud_controller.audit import record as audit
from cloud_controller.desired_state import selector_selects
from cloud_controller.exceptions import Conflict, NotFound
from cloud_controller.models import Bundle, Deployment, Device, DeviceGroup, ModelVersion, Stage
from cloud_controller.rollout_gates import Measured, measure, reports
from cloud_controller.rollout_models import (
    ACTIVE,
    Action,
    ByState,
    DecisionPublic,
    PreviousModel,
    Rollout,
    RolloutCreate,
    RolloutDecision,
    RolloutPublic,
    RolloutState,
    RolloutStatus,
    WaveStatus,
)
from cloud_controller.waves import position, target, threshold

_DONE = {Action.PAUSE: "paused", Action.RESUME: "resumed", Action.ABORT: "aborted"}


def _running(session: Session, group: DeviceGroup, model_id: str, target: str) -> tuple[str, str] | None:
    """What most of the group's devices run of ``model_id`` when no deployment says: the version an
    abort puts them back on (devices provisioned by hand). Only a version with a bundle qualifies."""
    counts: Counter[str] = Counter(
        version
        for labels, running_model, version in session.exec(
            select(Device.labels, Device.model_id, Device.model_version)
        ).all()
        if running_model == model_id
        and version not in (None, target)
        and selector_selects(group.selector, labels)
    )
    for version, _ in counts.most_common():
        stored = session.exec(
            select(Bundle.sha256)
            .join(ModelVersion, col(Bundle.model_version_id) == col(ModelVersion.id))
            .where(ModelVersion.model_id == model_id, ModelVersion.version == version)
        ).first()
        if stored is not None:
            return model_id, version
    return None


def create(*, session: Session, body: RolloutCreate, actor: str) -> Rollout:
    """Check the version and the group, then start wave 0 (its devices' desired state changes)."""
    group = session.exec(select(DeviceGroup).where(DeviceGroup.name == body.group)).first()
    if group is None or group.id is None:
        raise NotFound(f"Group {body.group} not found")
    ref = f"{body.model_id}@{body.version}"
    version = session.exec(
        select(ModelVersion).where(
            ModelVersion.model_id == body.model_id, ModelVersion.version == body.version
        )
    ).first()
    if version is None:
        raise NotFound(f"Model version {ref} not found")
    if version.stage is Stage.ARCHIVED:
        raise Conflict(f"Model version {ref} is archived")
    if session.exec(select(Bundle.sha256).where(Bundle.model_version_id == version.id)).first() is None:
        raise Conflict(f"Model version {ref} has no bundle to install")
    active = active_for_group(session, group.id)
    if active is not None:
        raise Conflict(
            f"Group {group.name} has an active rollout {active.id} ({active.state}): abort it first"
        )
    deployed = session.exec(
        select(Deployment).where(Deployment.group_id == group.id).order_by(col(Deployment.id).desc())
    ).first()
    if deployed is not None and (deployed.model_id, deployed.version) == (body.model_id, body.version):
        raise Conflict(f"Group {group.name} runs {ref} already")
    previous = (
        (deployed.model_id, deployed.version)
        if deployed
        else _running(session, group, body.model_id, body.version)
    )
    now = time.time()
    rollout = Rollout(
        id=_new_id(session),
        model_id=body.model_id,
        version=body.version,
        group_id=group.id,
        group_name=group.name,
        previous_model_id=previous[0] if previous else None,
        previous_version=previous[1] if previous else None,
        waves=[w.model_dump() for w in body.waves],
        soak_s=body.soak_s,
        shadow_s=body.shadow_s,
        gates=body.gates.model_dump(),
        state=RolloutState.RUNNING,
        created_by=actor,
        created_at=now,
        updated_at=now,
    )
    # Newest of all layers when it starts: every device of the group is the rollout's.
    labels = session.exec(select(Device.id, Device.labels)).all()
    positions = [position(rollout.id, d) for d, lab in labels if selector_selects(group.selector, lab)]
    limit, count = threshold(rollout.waves[0], positions, 0)
    rollout.progress = [
        {"threshold": limit, "target": count, "started_at": now, "clock": now, "reached_at": None}
    ]
    session.add(rollout)
    try:
        session.flush()  # one active rollout per group: the database's partial unique index decides
    except IntegrityError:
        session.rollback()
        raise Conflict(f"Group {group.name} has an active rollout: abort it first") from None
    audit(
        session=session,
        actor=actor,
        action="create",
        resource=f"rollout/{rollout.id}",
        after=public(rollout).model_dump(mode="json"),
    )
    reason = f"wave 0 starts with a target of {count} of {len(positions)} devices"
    _decide(session, rollout, Action.START, reason, {"devices": len(positions), "target": count}, actor, now)
    session.commit()
    session.refresh(rollout)
    return rollout


def active_for_group(session: Session, group_id: int) -> Rollout | None:
    return session.exec(
        select(Rollout).where(Rollout.group_id == group_id, col(Rollout.state).in_(ACTIVE))
    ).first()


def get(session: Session, rollout_id: str) -> Rollout:
    rollout = session.get(Rollout, rollout_id)
    if rollout is None:
        raise NotFound(f"Rollout {rollout_id} not found")
    return rollout


def pause(*, session: Session, rollout_id: str, actor: str) -> Rollout:
    return _operate(session, rollout_id, actor, Action.PAUSE, (RolloutState.RUNNING,), RolloutState.PAUSED)


def resume(*, session: Session, rollout_id: str, actor: str) -> Rollout:
    """Running again; the current wave's install deadline counts from now."""
    return _operate(session, rollout_id, actor, Action.RESUME, (RolloutState.PAUSED,), RolloutState.RUNNING)


def abort(*, session: Session, rollout_id: str, actor: str) -> Rollout:
    """Aborted: every device of the rollout gets the previous version back."""
    return _operate(session, rollout_id, actor, Action.ABORT, ACTIVE, RolloutState.ABORTED)


#: An operator's pause, resume or abort is tried again this often when the engine took a step of
#: the same rollout between our read and our write (it ticks every second): the operator asked for
#: a state, not for a race.
_OPERATE_ATTEMPTS = 5


def _operate(
    session: Session,
    rollout_id: str,
    actor: str,
    action: Action,
    allowed: tuple[RolloutState, ...],
    state: RolloutState,
) -> Rollout:
    for _ in range(_OPERATE_ATTEMPTS):
        rollout = get(session, rollout_id)
        if rollout.state not in allowed:
            names = " or ".join(s.value for s in allowed)
            raise Conflict(
                f"Rollout {rollout_id} is {rollout.state}: only a {names} rollout can be {_DONE[action]}"
            )
        now = time.time()
        measured = current(session, rollout)
        changes: dict[str, Any] = {"state": state}
        if action is Action.RESUME:
            wave = rollout.current_wave
            changes["progress"] = [
                {**w, "clock": now} if i == wave else w for i, w in enumerate(rollout.progress)
            ]
        values = {**measured.gates.model_dump(), "devices": measured.devices} if measured else {}
        if record(
            session,
            rollout,
            action=action,
            reason=f"{_DONE[action]} by {actor}",
            values=values,
            actor=actor,
            now=now,
            **changes,
        ):
            session.refresh(rollout)
            return rollout
        session.expire_all()  # the engine's step: read the rollout again and decide again
    raise Conflict(f"Rollout {rollout_id} kept changing meanwhile: try again")


def current(session: Session, rollout: Rollout) -> Measured | None:
    """The current wave's measure, or None before any wave started."""
    if not rollout.progress:
        return None
    wave = rollout.progress[rollout.current_wave]
    return measure(
        reports(session, rollout),
        threshold=int(wave["threshold"]),
        clock=wave["clock"],
        deadline_s=rollout.gates["install_deadline_s"],
    )


def record(
    session: Session,
    rollout: Rollout,
    *,
    action: Action,
    reason: str,
    values: dict[str, Any],
    actor: str,
    now: float,
    then: Callable[[Session], None] | None = None,
    **changes: Any,
) -> bool:
    """Apply ``changes`` and write the decision and its audit entry, in one transaction, if the
    rollout is still at the step it was read at. False (nothing written) if it was not.

    ``then``: more to write in the same transaction once the step is taken.
    """
    step = rollout.step
    result = session.execute(
        update(Rollout)
        .where(col(Rollout.id) == rollout.id, col(Rollout.step) == step)
        .values(step=step + 1, updated_at=now, **changes)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        return False
    wave = changes.get("current_wave", rollout.current_wave)
    if action is Action.ADVANCE:
        wave -= 1  # the decision is about the wave that passed
    _decide(session, rollout, action, reason, values, actor, now, wave=wave)
    if then is not None:
        then(session)
    session.commit()
    return True


def _decide(
    session: Session,
    rollout: Rollout,
    action: Action,
    reason: str,
    values: dict[str, Any],
    actor: str,
    now: float,
    *,
    wave: int = 0,
) -> None:
    decision = RolloutDecision(
        rollout_id=rollout.id, at=now, wave=wave, action=action, reason=reason, values=values, actor=actor
    )
    session.add(decision)
    audit(
        session=session,
        actor=actor,
        action=f"rollout.{action.value}",
        resource=f"rollout/{rollout.id}",
        after=decision.model_dump(mode="json", exclude={"id"}),
    )


def last_decision(session: Session, rollout_id: str) -> RolloutDecision | None:
    return session.exec(
        select(RolloutDecision)
        .where(RolloutDecision.rollout_id == rollout_id)
        .order_by(col(RolloutDecision.id).desc())
        .limit(1)
    ).first()


def public(rollout: Rollout) -> RolloutPublic:
    previous = None
    if rollout.previous_model_id is not None and rollout.previous_version is not None:
        previous = PreviousModel(model_id=rollout.previous_model_id, version=rollout.previous_version)
    return RolloutPublic(
        id=rollout.id,
        model_id=rollout.model_id,
        version=rollout.version,
        group=rollout.group_name,
        previous=previous,
        waves=rollout.waves,  # type: ignore[arg-type]
        soak_s=rollout.soak_s,
        shadow_s=rollout.shadow_s,
        gates=rollout.gates,  # type: ignore[arg-type]
        state=RolloutState(rollout.state),
        current_wave=rollout.current_wave,
        created_at=rollout.created_at,
        updated_at=rollout.updated_at,
    )


def status(session: Session, rollout: Rollout) -> RolloutStatus:
    """The rollout with every wave's devices by state and gate values, and every decision."""
    devices = reports(session, rollout)
    waves = []
    for index, wave in enumerate(rollout.waves):
        if index < len(rollout.progress):
            started = rollout.progress[index]
            measured = measure(
                devices,
                threshold=int(started["threshold"]),
                clock=started["clock"],
                deadline_s=rollout.gates["install_deadline_s"],
            )
            waves.append(
                WaveStatus(
                    index=index,
                    target=started["target"],
                    devices=measured.devices,
                    by_state=measured.by_state,
                    started_at=started["started_at"],
                    gates=measured.gates,
                )
            )
        else:
            waves.append(
                WaveStatus(
                    index=index,
                    target=target(wave, len(devices)),
                    devices=0,
                    by_state=ByState(),
                    started_at=None,
                    gates=None,
                )
            )
    decisions = session.exec(
        select(RolloutDecision)
        .where(RolloutDecision.rollout_id == rollout.id)
        .order_by(col(RolloutDecision.id))
    ).all()
    return RolloutStatus(
        **public(rollout).model_dump(exclude={"waves"}),
        waves=waves,
        decisions=[
            DecisionPublic(at=d.at, wave=d.wave, action=Action(d.action), reason=d.reason, values=d.values)
            for d in decisions
        ],
    )


def _new_id(session: Session) -> str:
    while True:
        rollout_id = f"r-{secrets.token_hex(4)}"
        if session.get(Rollout, rollout_id) is None:
            return rollout_id
