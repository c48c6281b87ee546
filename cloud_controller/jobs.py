"""Jobs in the database: create, list, cancel (the API's side), claim, lease and write steps (a worker's).

Every write a worker makes is conditional on the job still being its own (``worker_id``) and
running: a worker that lost its lease (it stalled, and another took the job over) or whose job was
cancelled writes nothing more. A claim is a conditional UPDATE checked by its row count, which is
atomic on SQLite (one writer) and on PostgreSQL (the second UPDATE re-reads the row the first
changed), so that several workers never run one job twice.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, or_, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from cloud_controller.alarms import policy_of
from cloud_controller.audit import record as audit
from cloud_controller.exceptions import Conflict, NotFound
from cloud_controller.job_models import (
    UNFINISHED,
    Job,
    JobCreate,
    JobKind,
    JobParams,
    JobPublic,
    JobRound,
    JobState,
    JobStatus,
    JobTrigger,
    ModelRecipe,
    RoundPublic,
    StepPublic,
    StepState,
)
from cloud_controller.label_models import Alarm, AlarmAction

#: The pipeline, in order. A federated job trains with Flower in its ``train`` step.
STEPS = ("dataset", "train", "build", "evaluate", "register", "rollout")
#: A job whose worker died this many times is failed rather than claimed again.
MAX_ATTEMPTS = 3


def _new_id(session: Session) -> str:
    while True:
        job_id = f"j-{secrets.token_hex(4)}"
        if session.get(Job, job_id) is None:
            return job_id


def new_job(
    session: Session, body: JobCreate, *, actor: str, trigger: JobTrigger, trigger_ref: str | None
) -> Job:
    """A queued job (added to the session, not committed)."""
    now = time.time()
    job = Job(
        id=_new_id(session),
        kind=body.kind.value,
        model_id=body.model_id,
        state=JobState.QUEUED.value,
        trigger=trigger.value,
        trigger_ref=trigger_ref,
        params=body.params.model_dump(mode="json"),
        steps=[
            {"name": s, "state": StepState.PENDING.value, "log": [], "started_at": None, "ended_at": None}
            for s in STEPS
        ],
        created_by=actor,
        created_at=now,
        updated_at=now,
    )
    session.add(job)
    return job


def create(
    *,
    session: Session,
    body: JobCreate,
    actor: str,
    trigger: JobTrigger = JobTrigger.OPERATOR,
    trigger_ref: str | None = None,
) -> Job:
    job = new_job(session, body, actor=actor, trigger=trigger, trigger_ref=trigger_ref)
    _audit_created(session, job, actor)
    session.commit()
    session.refresh(job)
    return job


def get(session: Session, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"Job {job_id} not found")
    return job


def cancel(*, session: Session, job_id: str, actor: str, now: float | None = None) -> Job:
    """A queued job, or a running one whose worker is gone, is cancelled now; a running one is asked
    to stop, and its worker stops at its next check (between steps, and inside long ones)."""
    now = time.time() if now is None else now
    job = get(session, job_id)
    if job.state not in UNFINISHED:
        raise Conflict(f"Job {job_id} is {job.state}: only a queued or running job can be cancelled")
    reason = f"cancelled by {actor}"
    stopped = session.execute(
        update(Job)
        .where(
            col(Job.id) == job_id,
            or_(
                col(Job.state) == JobState.QUEUED.value,
                and_(col(Job.state) == JobState.RUNNING.value, col(Job.lease_until) < now),
            ),
        )
        .values(
            state=JobState.CANCELLED.value,
            cancel_requested=True,
            error=reason,
            ended_at=now,
            updated_at=now,
            steps=[_cancel_step(s, now) for s in job.steps],
        )
    )
    if stopped.rowcount != 1:  # type: ignore[attr-defined]
        session.execute(
            update(Job)
            .where(col(Job.id) == job_id, col(Job.state) == JobState.RUNNING.value)
            .values(cancel_requested=True, updated_at=now)
        )
    audit(session=session, actor=actor, action="cancel", resource=f"job/{job_id}")
    session.commit()
    session.refresh(job)
    return job


def _cancel_step(step: dict[str, Any], now: float) -> dict[str, Any]:
    if step["state"] in (StepState.PENDING.value, StepState.RUNNING.value):
        return {**step, "state": StepState.CANCELLED.value, "ended_at": now}
    return step


# -- a worker's side -------------------------------------------------------------------------


def claim(engine: Engine, worker_id: str, *, lease_s: float, now: float | None = None) -> Job | None:
    """Take the oldest queued job, or a running one whose lease passed (its worker died), or None.

    A job taken over ``MAX_ATTEMPTS`` times is failed instead: a step that kills its worker every
    time does not keep the fleet's workers busy forever.
    """
    now = time.time() if now is None else now
    claimable = or_(
        col(Job.state) == JobState.QUEUED.value,
        and_(col(Job.state) == JobState.RUNNING.value, col(Job.lease_until) < now),
    )
    with Session(engine) as session:
        candidates = session.exec(
            select(Job.id, Job.attempts, Job.step).where(claimable).order_by(col(Job.created_at)).limit(10)
        ).all()
        for job_id, attempts, step in candidates:
            if attempts >= MAX_ATTEMPTS:
                _give_up(session, job_id, attempts, step, now, claimable)
                continue
            taken = session.execute(
                update(Job)
                .where(col(Job.id) == job_id, claimable)
                .values(
                    state=JobState.RUNNING.value,
                    worker_id=worker_id,
                    lease_until=now + lease_s,
                    attempts=col(Job.attempts) + 1,
                    updated_at=now,
                )
            )
            if taken.rowcount == 1:  # type: ignore[attr-defined]
                session.commit()
                job = session.get(Job, job_id)
                assert job is not None
                if job.started_at is None:
                    job.started_at = now
                    session.commit()
                session.refresh(job)
                session.expunge(job)
                return job
            session.rollback()
    return None


def _give_up(
    session: Session, job_id: str, attempts: int, step: str | None, now: float, claimable: Any
) -> None:
    session.execute(
        update(Job)
        .where(col(Job.id) == job_id, claimable)
        .values(
            state=JobState.FAILED.value,
            error=f"its worker was lost {attempts} times (last at step {step}): not tried again",
            ended_at=now,
            updated_at=now,
        )
    )
    session.commit()


@dataclass
class Lease:
    """What the lease holder learnt on renewing: whether it still holds the job, whether to stop."""

    held: bool
    cancel_requested: bool


def renew(engine: Engine, job_id: str, worker_id: str, *, lease_s: float) -> Lease:
    now = time.time()
    with Session(engine) as session:
        renewed = session.execute(
            update(Job)
            .where(
                col(Job.id) == job_id,
                col(Job.worker_id) == worker_id,
                col(Job.state) == JobState.RUNNING.value,
            )
            .values(lease_until=now + lease_s)
        )
        session.commit()
        cancel = session.exec(select(Job.cancel_requested).where(col(Job.id) == job_id)).first()
    return Lease(held=renewed.rowcount == 1, cancel_requested=bool(cancel))  # type: ignore[attr-defined]


def cancel_requested(engine: Engine, job_id: str) -> bool:
    with Session(engine) as session:
        return bool(session.exec(select(Job.cancel_requested).where(col(Job.id) == job_id)).first())


def write(engine: Engine, job_id: str, worker_id: str, **values: Any) -> bool:
    """Write ``values`` to the job if this worker still runs it; False if it does not any more."""
    with Session(engine) as session:
        result = session.execute(
            update(Job)
            .where(
                col(Job.id) == job_id,
                col(Job.worker_id) == worker_id,
                col(Job.state) == JobState.RUNNING.value,
            )
            .values(updated_at=time.time(), **values)
        )
        session.commit()
    return result.rowcount == 1  # type: ignore[attr-defined]


def start_for_alarms(engine: Engine, *, actor: str) -> list[tuple[int, str]]:
    """Start a retraining job for each open ``auto`` alarm without one; ``(alarm id, job id)`` of
    each alarm taken (see `_take_alarm`: an unfinished job covering the alarm's site is attached
    instead).

    The alarm's ``job_id`` is set only if it is still empty, in the transaction that creates the
    job: two workers racing for one alarm start one job.
    """
    taken: list[tuple[int, str]] = []
    with Session(engine) as session:
        open_alarms = session.exec(
            select(Alarm)
            .where(
                col(Alarm.action) == AlarmAction.AUTO.value,
                col(Alarm.job_id).is_(None),
                col(Alarm.resolved_at).is_(None),
            )
            .order_by(col(Alarm.fired_at))
        ).all()
        for alarm in open_alarms:
            assert alarm.id is not None
            alarm_id = alarm.id  # read now: a rollback expires the row
            job_id = _take_alarm(session, alarm, kind=JobKind.RETRAIN, params=None, actor=actor)
            if job_id is not None:
                taken.append((alarm_id, job_id))
    return taken


def start_for_alarm(
    *,
    session: Session,
    alarm_id: int,
    kind: JobKind,
    params: JobParams | None = None,
    actor: str,
) -> Job:
    """An operator's job for one open alarm (an ``ask`` alarm's decision; any open alarm without a
    job): the job now recorded on the alarm, new or attached (see `_take_alarm`).

    A new job trains on the alarm's site (``params.sites`` is replaced; the API refuses a body
    naming it); without ``params.window_s`` its data window is the auto path's: the policy's
    window before the alarm fired, until the job runs.

    NotFound: no such alarm, or a new job is needed and the model has no training recipe.
    Conflict: the alarm is resolved, or has a job (set by another operator or a worker first).
    """
    alarm = session.get(Alarm, alarm_id)
    if alarm is None:
        raise NotFound(f"Alarm {alarm_id} not found")
    _check_open_without_job(alarm)
    job_id = _take_alarm(session, alarm, kind=kind, params=params, actor=actor, recipe_needed=True)
    if job_id is None:  # another request took the alarm between our read and our update
        alarm = session.get(Alarm, alarm_id)
        assert alarm is not None
        _check_open_without_job(alarm)
        raise Conflict(f"Alarm {alarm_id} changed while its job was started: try again")
    return get(session, job_id)


def _check_open_without_job(alarm: Alarm) -> None:
    if alarm.resolved_at is not None:
        raise Conflict(f"Alarm {alarm.id} is resolved: its condition cleared, no job is started for it")
    if alarm.job_id is not None:
        raise Conflict(f"Alarm {alarm.id} has job {alarm.job_id} already")


def _take_alarm(
    session: Session,
    alarm: Alarm,
    *,
    kind: JobKind,
    params: JobParams | None,
    actor: str,
    recipe_needed: bool = False,
) -> str | None:
    """Give one open alarm a job, and commit: the job's id, or None (rolled back) when the alarm got
    a job or was resolved meanwhile.

    An unfinished job of the model whose data covers the alarm's site (no ``sites`` filter, or one
    naming the site) is attached to the alarm, whatever its kind. Otherwise a new job of ``kind``
    is scoped to the alarm: the alarm's site only (``params.sites``), and a data window from the
    alarm policy's ``window_s`` before the alarm fired until the job runs (what the alarm judged,
    and what came since), unless ``params`` set ``window_s``. ``recipe_needed``: a new job of a
    model without a training recipe is refused (NotFound), as ``POST /api/v1/jobs`` refuses it.

    The alarm's ``job_id`` is set only if it is still empty and the alarm still open, in the
    transaction that creates the job, with an ``alarm.job`` audit record.
    """
    alarm_id, model_id, site_id = alarm.id, alarm.model_id, alarm.site_id
    unfinished = session.exec(
        select(Job.id, Job.params)
        .where(col(Job.model_id) == model_id, col(Job.state).in_([s.value for s in UNFINISHED]))
        .order_by(col(Job.created_at))
    ).all()
    job_id = next((job_id for job_id, job_params in unfinished if _covers(job_params, site_id)), None)
    if job_id is None:
        if recipe_needed and session.get(ModelRecipe, model_id) is None:
            raise NotFound(
                f"Model {model_id} has no training recipe: PUT /api/v1/models/{model_id}/recipe first"
            )
        given = params or JobParams()
        scope: dict[str, Any] = {"sites": [site_id]}
        if "window_s" not in given.model_fields_set:
            window_s = policy_of(session, model_id).window_s + max(0.0, time.time() - alarm.fired_at)
            scope["window_s"] = min(window_s, _MAX_WINDOW_S)
        job = new_job(
            session,
            JobCreate(kind=kind, model_id=model_id, params=given.model_copy(update=scope)),
            actor=actor,
            trigger=JobTrigger.ALARM,
            trigger_ref=f"alarm {alarm_id}: {alarm.kind} at {site_id}",
        )
        _audit_created(session, job, actor)
        job_id = job.id
    marked = session.execute(
        update(Alarm)
        .where(col(Alarm.id) == alarm_id, col(Alarm.job_id).is_(None), col(Alarm.resolved_at).is_(None))
        .values(job_id=job_id)
    )
    if marked.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        return None
    audit(
        session=session,
        actor=actor,
        action="alarm.job",
        resource=f"alarm/{alarm_id}",
        after={"job_id": job_id},
    )
    session.commit()
    return job_id


#: The longest data window a job may have (`JobParams.window_s`).
_MAX_WINDOW_S = 365 * 86_400


def _covers(params: dict[str, Any], site_id: str) -> bool:
    """Whether a job with these params trains on the site's data: no ``sites`` filter, or one naming it."""
    sites = params.get("sites")
    return not sites or site_id in sites


def start_scheduled(
    engine: Engine, model_id: str, every_s: float, *, actor: str, now: float | None = None
) -> str | None:
    """The retraining job of ``model_id`` for the current period of ``every_s`` seconds, if this call
    made it (None: made already, by this worker or another).

    The job's id is derived from the model and the period: two workers inserting it race on the
    primary key, and one insert wins, without any other coordination.
    """
    now = time.time() if now is None else now
    period = int(now // every_s)
    digest = hashlib.sha256(f"{model_id}\x00{every_s:g}\x00{period}".encode()).hexdigest()
    job_id = f"j-{digest[:8]}"
    with Session(engine) as session:
        if session.get(Job, job_id) is not None:
            return None
        job = new_job(
            session,
            JobCreate(kind=JobKind.RETRAIN, model_id=model_id),
            actor=actor,
            trigger=JobTrigger.SCHEDULE,
            trigger_ref=f"every {every_s:g} s, period {period}",
        )
        job.id = job_id
        try:
            _audit_created(session, job, actor)
            session.commit()
        except IntegrityError:
            session.rollback()
            return None
    return job_id


# -- what the API answers ----------------------------------------------------------------------


def public(job: Job) -> JobPublic:
    return JobPublic.model_validate(job, from_attributes=True)


def status(session: Session, job: Job) -> JobStatus:
    rounds = session.exec(
        select(JobRound).where(JobRound.job_id == job.id).order_by(col(JobRound.round))
    ).all()
    return JobStatus(
        **public(job).model_dump(),
        steps=[StepPublic(**s) for s in job.steps],
        artifacts=job.artifacts,
        rounds=[RoundPublic.model_validate(r, from_attributes=True) for r in rounds],
    )


def _audit_created(session: Session, job: Job, actor: str) -> None:
    """Flush the new job (its id and defaults) and record its creation in the same transaction."""
    session.flush()
    audit(
        session=session,
        actor=actor,
        action="create",
        resource=f"job/{job.id}",
        after=public(job).model_dump(mode="json"),
    )
