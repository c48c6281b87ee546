"""Alarm policies per model, and the alarms they raised."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlmodel import col, select

from cloud_controller import alarms
from cloud_controller.api.deps import IdQuery, Operator, Reader, SessionDep
from cloud_controller.api.errors import AUTH, BODY, errors
from cloud_controller.api.routes.labels import MODEL_ID_PATTERN, ModelIdPath
from cloud_controller.audit import who
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
