"""Alarm policies per model, and judging them: which alarms fire, stay open, or resolve.

Per model and site, two conditions: data drift (the latest PSI-scored drift window of the site,
whatever the version, above ``psi_threshold``; mean-shift scores are not PSI and are not judged)
and accuracy (records of the version the site ran last, stored whole and labelled, within the
trailing ``window_s``, below ``accuracy_floor`` once there are ``min_samples`` of them). Fewer
labelled records, or no PSI-scored window, judge nothing: an open alarm stays open until its
condition is seen to clear. A policy set to ``off``
(or a threshold set to null) clears its alarms.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from cloud_controller import audit
from cloud_controller.accuracy import Tally, tallies
from cloud_controller.label_models import (
    Alarm,
    AlarmAction,
    AlarmKind,
    AlarmPolicy,
    AlarmPolicyBody,
    AlarmPolicyPublic,
    AlarmPublic,
    AlarmState,
)
from cloud_controller.metrics import drift_keys
from cloud_controller.models import Drift, ModelVersion

ACTOR = "alarm-evaluator"
DEFAULT = AlarmPolicyBody()


def policy_of(session: Session, model_id: str) -> AlarmPolicyPublic:
    """The model's policy, or the defaults when none was set."""
    stored = session.get(AlarmPolicy, model_id)
    if stored is None:
        return AlarmPolicyPublic(model_id=model_id, updated_by=None, updated_at=None, **DEFAULT.model_dump())
    return AlarmPolicyPublic.model_validate(stored, from_attributes=True)


def set_policy(*, session: Session, model_id: str, body: AlarmPolicyBody, actor: str) -> AlarmPolicyPublic:
    stored = session.get(AlarmPolicy, model_id)
    before = audit.snapshot(stored)
    if stored is None:
        stored = AlarmPolicy(model_id=model_id, updated_by=actor, **body.model_dump())
    else:
        for name, value in body.model_dump().items():
            setattr(stored, name, value)
        stored.updated_by = actor
    stored.action = body.action.value
    session.add(stored)
    audit.record(
        session=session,
        actor=actor,
        action="alarm_policy.set",
        resource=f"models/{model_id}/alarm-policy",
        before=before,
        after=audit.snapshot(stored),
    )
    session.commit()
    session.refresh(stored)
    return AlarmPolicyPublic.model_validate(stored, from_attributes=True)


def public(alarm: Alarm) -> AlarmPublic:
    return AlarmPublic.model_validate(
        {
            **alarm.model_dump(),
            "state": AlarmState.OPEN if alarm.resolved_at is None else AlarmState.RESOLVED,
        }
    )


# -- judging ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reading:
    """One condition of one model at one site, as measured now."""

    model_id: str
    site_id: str
    kind: AlarmKind
    version: str | None
    value: float
    samples: int
    #: None when too little was measured to judge.
    threshold: float | None
    breached: bool | None


@dataclass
class Outcome:
    fired: list[Alarm]
    resolved: list[Alarm]


def policies(session: Session, models: Iterable[str]) -> dict[str, AlarmPolicyPublic]:
    stored = {p.model_id: p for p in session.exec(select(AlarmPolicy)).all()}
    found: dict[str, AlarmPolicyPublic] = {
        m: AlarmPolicyPublic.model_validate(p, from_attributes=True) for m, p in stored.items()
    }
    for model in models:
        if model not in found:
            found[model] = policy_of(session, model)
    return found


def latest_psi(session: Session) -> dict[tuple[str, str], Drift]:
    """The latest PSI-scored drift window of each (model, site), over its versions, by index seeks.

    Mean-shift scores (windows of a version without a drift reference) are in standard deviations,
    not PSI: a PSI threshold does not apply to them.
    """
    latest: dict[tuple[str, str], Drift] = {}
    for site, model, version in list(drift_keys(session)):
        window = session.exec(
            select(Drift)
            .where(
                Drift.site_id == site,
                Drift.model_id == model,
                Drift.model_version == version,
                col(Drift.score).is_not(None),
                Drift.score_method == "psi",
            )
            .order_by(col(Drift.window_start).desc())
            .limit(1)
        ).first()
        held = latest.get((model, site))
        if window is not None and (held is None or window.window_end > held.window_end):
            latest[(model, site)] = window
    return latest


def accuracy_by_site(session: Session, rules: dict[str, AlarmPolicyPublic], now: float) -> list[Tally]:
    """Tallies over each model's trailing window: one query per distinct window length.

    Models without a policy are judged with the defaults; ``rules`` gets their defaults added.
    """
    found: list[Tally] = []
    lengths = {p.window_s for p in rules.values()} | {DEFAULT.window_s}
    for length in sorted(lengths):
        # The default window's query finds every model with labels; another window's, its models only.
        models = None if length == DEFAULT.window_s else [m for m, p in rules.items() if p.window_s == length]
        for tally in tallies(session=session, since=now - length, models=models):
            if tally.model_id not in rules:
                rules[tally.model_id] = policy_of(session, tally.model_id)
            if rules[tally.model_id].window_s == length:
                found.append(tally)
    return found


def readings(session: Session, now: float) -> tuple[list[Reading], list[Tally], dict[str, AlarmPolicyPublic]]:
    """Every condition of every model with drift windows, labelled records or a policy."""
    psi = latest_psi(session)
    registered = session.exec(select(ModelVersion.model_id).distinct()).all()
    rules = policies(session, {*registered, *(model for model, _ in psi)})
    counted = accuracy_by_site(session, rules, now)
    found: list[Reading] = []
    for (model, site), window in psi.items():
        rule = rules[model]
        judged = rule.psi_threshold is not None
        found.append(
            Reading(
                model,
                site,
                AlarmKind.DATA_DRIFT,
                window.model_version,
                float(window.score or 0.0),
                window.count,
                rule.psi_threshold,
                (float(window.score or 0.0) > rule.psi_threshold) if judged else None,  # type: ignore[operator]
            )
        )
    current: dict[tuple[str, str], Tally] = {}
    for tally in counted:  # the version each site ran last
        held = current.get((tally.model_id, tally.site_id))
        if held is None or tally.last_ts > held.last_ts:
            current[(tally.model_id, tally.site_id)] = tally
    for (model, site), tally in current.items():
        rule = rules[model]
        judged = rule.accuracy_floor is not None and tally.labelled >= rule.min_samples
        found.append(
            Reading(
                model,
                site,
                AlarmKind.ACCURACY,
                tally.version,
                tally.accuracy,
                tally.labelled,
                rule.accuracy_floor,
                (tally.accuracy < rule.accuracy_floor) if judged else None,  # type: ignore[operator]
            )
        )
    return found, counted, rules


def apply(
    *, session: Session, found: list[Reading], rules: dict[str, AlarmPolicyPublic], now: float
) -> Outcome:
    """Fire, update and resolve alarms from ``found``, in one transaction with their audit records.

    Two evaluators racing to fire one alarm (every controller replica runs one): the database's
    one-open-alarm index refuses the second's insert, at its flush (PostgreSQL) or its commit. Its
    transaction is rolled back and the pass applied again on what is open now, where it finds the
    other's alarm open and updates it: the rest of the pass is not lost.
    """
    for _ in range(_ATTEMPTS - 1):
        try:
            return _apply_once(session=session, found=found, rules=rules, now=now)
        except IntegrityError:
            session.rollback()
    try:
        return _apply_once(session=session, found=found, rules=rules, now=now)
    except IntegrityError:
        session.rollback()  # raced on every attempt: the next pass sees what the others fired
        return Outcome([], [])


#: Passes of `apply` over one set of readings when other evaluators keep firing the same alarms.
_ATTEMPTS = 3


def _apply_once(
    *, session: Session, found: list[Reading], rules: dict[str, AlarmPolicyPublic], now: float
) -> Outcome:
    """One try of `apply`: IntegrityError (a racing evaluator fired an alarm first) is the caller's."""
    outcome = Outcome([], [])
    open_alarms = {
        (a.model_id, a.site_id, a.kind): a
        for a in session.exec(select(Alarm).where(col(Alarm.resolved_at).is_(None))).all()
    }
    seen: set[tuple[str, str, str]] = set()
    for reading in found:
        key = (reading.model_id, reading.site_id, reading.kind.value)
        seen.add(key)
        rule = rules[reading.model_id]
        alarm = open_alarms.get(key)
        if rule.action is AlarmAction.OFF or reading.threshold is None:
            if alarm is not None:
                _resolve(session, alarm, reading.value, now, outcome)
            continue
        if reading.breached is None:
            continue
        if alarm is None and reading.breached:
            alarm = Alarm(
                model_id=reading.model_id,
                version=reading.version,
                site_id=reading.site_id,
                kind=reading.kind.value,
                value=reading.value,
                threshold=reading.threshold,
                samples=reading.samples,
                action=rule.action.value,
                fired_at=now,
                last_value=reading.value,
                evaluated_at=now,
            )
            session.add(alarm)
            session.flush()
            audit.record(
                session=session,
                actor=ACTOR,
                action="alarm.fire",
                resource=f"alarms/{alarm.id}",
                after=audit.snapshot(alarm),
            )
            outcome.fired.append(alarm)
        elif alarm is not None and reading.breached:
            alarm.last_value, alarm.evaluated_at = reading.value, now
            session.add(alarm)
        elif alarm is not None:
            _resolve(session, alarm, reading.value, now, outcome)
    # A policy set to off resolves alarms even of a condition no longer measured at all.
    for key, alarm in open_alarms.items():
        if key not in seen and rules.get(alarm.model_id, DEFAULT).action is AlarmAction.OFF:
            _resolve(session, alarm, alarm.last_value, now, outcome)
    session.commit()
    return outcome


def _resolve(session: Session, alarm: Alarm, value: float, now: float, outcome: Outcome) -> None:
    before = audit.snapshot(alarm)
    alarm.last_value, alarm.evaluated_at, alarm.resolved_at = value, now, now
    session.add(alarm)
    audit.record(
        session=session,
        actor=ACTOR,
        action="alarm.resolve",
        resource=f"alarms/{alarm.id}",
        before=before,
        after=audit.snapshot(alarm),
    )
    outcome.resolved.append(alarm)
