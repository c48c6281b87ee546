"""Alarm policies per model, and the alarms they raised."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from sqlmodel import col, select

from cloud_controller import alarms, jobs
from cloud_controller.api.deps import IdQuery, IntId, Operator, Reader, SessionDep
from cloud_controller.api.errors import AUTH, BODY, errors
from cloud_controller.api.routes.labels import MODEL_ID_PATTERN, ModelIdPath
from cloud_controller.audit import who
from cloud_controller.exceptions import Conflict, NotFound
from cloud_controller.job_models import AlarmJobCreate, JobPublic
from cloud_controller.label_models import (
    Alarm,
    AlarmKind,
    AlarmPolicyBody,
    AlarmPolicyPublic,
    AlarmsPublic,
    AlarmState,
)

router = APIRouter(tags=["alarms"], responses=errors(*AUTH))


@router.get("/models/{model_id}/alarm-policy", response_model=AlarmPolicyPublic)
def get_policy(session: SessionDep, _: Reader, model_id: ModelIdPath) -> AlarmPolicyPublic:
    """A model's alarm policy: the defaults (``updated_by`` null) until one is set."""
    return alarms.policy_of(session, model_id)


@router.put("/models/{model_id}/alarm-policy", response_model=AlarmPolicyPublic, responses=errors(*BODY))
def put_policy(
    session: SessionDep, caller: Operator, model_id: ModelIdPath, body: AlarmPolicyBody
) -> AlarmPolicyPublic:
    """Set a model's alarm policy; the evaluator applies it at its next pass."""
    return alarms.set_policy(session=session, model_id=model_id, body=body, actor=who(caller))


@router.get("/alarms", response_model=AlarmsPublic)
def list_alarms(
    session: SessionDep,
    _: Reader,
    state: Annotated[AlarmState | None, Query()] = None,
    kind: Annotated[AlarmKind | None, Query()] = None,
    model_id: Annotated[str | None, Query(min_length=1, max_length=128, pattern=MODEL_ID_PATTERN)] = None,
    site: IdQuery = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AlarmsPublic:
    """Alarms, newest first: open ones until their condition clears, then resolved."""
    query = select(Alarm)
    if state is AlarmState.OPEN:
        query = query.where(col(Alarm.resolved_at).is_(None))
    elif state is AlarmState.RESOLVED:
        query = query.where(col(Alarm.resolved_at).is_not(None))
    if kind is not None:
        query = query.where(Alarm.kind == kind.value)
    if model_id is not None:
        query = query.where(Alarm.model_id == model_id)
    if site is not None:
        query = query.where(Alarm.site_id == site)
    rows = session.exec(query.order_by(col(Alarm.fired_at).desc(), col(Alarm.id).desc()).limit(limit)).all()
    return AlarmsPublic(data=[alarms.public(a) for a in rows], count=len(rows))


@router.post(
    "/alarms/{alarm_id}/job", response_model=JobPublic, status_code=201, responses=errors(*BODY, 404, 409)
)
def start_alarm_job(
    session: SessionDep, caller: Operator, alarm_id: IntId, body: AlarmJobCreate
) -> JobPublic:
    """An operator's decision on an open alarm (an ``ask`` one, or any without a job): a job of the
    kind asked for, trained on the alarm's site, recorded on the alarm; or the model's unfinished
    job whose data covers the site, attached as the worker attaches one for an ``auto`` alarm.

    404: no such alarm, or a new job is needed and the model has no training recipe. 409: the
    alarm is resolved, or has a job already (the detail names it).
    """
    try:
        job = jobs.start_for_alarm(
            session=session, alarm_id=alarm_id, kind=body.kind, params=body.params, actor=who(caller)
        )
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except Conflict as exc:
        raise HTTPException(409, str(exc)) from None
    return jobs.public(job)
