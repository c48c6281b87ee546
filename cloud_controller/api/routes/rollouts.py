"""Rollouts of a model version to a group, in waves with gates."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query
from sqlmodel import col, select

from cloud_controller import rollouts
from cloud_controller.api.deps import Operator, Reader, SessionDep
from cloud_controller.api.errors import AUTH, BODY, errors
from cloud_controller.audit import who
from cloud_controller.exceptions import Conflict, NotFound
from cloud_controller.rollout_models import (
    ROLLOUT_ID_PATTERN,
    Rollout,
    RolloutCreate,
    RolloutPublic,
    RolloutsPublic,
    RolloutState,
    RolloutStatus,
)

router = APIRouter(prefix="/rollouts", tags=["rollout"], responses=errors(*AUTH))

RolloutId = Annotated[str, Path(min_length=10, max_length=10, pattern=ROLLOUT_ID_PATTERN)]


def _http(call: Callable[[], Rollout]) -> Rollout:
    """The rollout, or the 404 / 409 its checks raised, with their sentence."""
    try:
        return call()
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except Conflict as exc:
        raise HTTPException(409, str(exc)) from None


@router.post("", response_model=RolloutPublic, status_code=201, responses=errors(*BODY, 404, 409))
def create_rollout(session: SessionDep, caller: Operator, body: RolloutCreate) -> RolloutPublic:
    """Start rolling a model version out to a group: wave 0's devices get it now."""
    return rollouts.public(_http(lambda: rollouts.create(session=session, body=body, actor=who(caller))))


@router.get("", response_model=RolloutsPublic)
def list_rollouts(
    session: SessionDep, _: Reader, state: Annotated[RolloutState | None, Query()] = None
) -> RolloutsPublic:
    """List rollouts, newest first, optionally in one state."""
    query = select(Rollout)
    if state is not None:
        query = query.where(Rollout.state == state.value)
    rows = session.exec(query.order_by(col(Rollout.created_at).desc())).all()
    return RolloutsPublic(data=[rollouts.public(r) for r in rows], count=len(rows))


@router.get("/{rollout_id}", response_model=RolloutStatus, responses=errors(404))
def get_rollout(session: SessionDep, _: Reader, rollout_id: RolloutId) -> RolloutStatus:
    """A rollout's waves (devices by update state, gate values) and every decision made."""
    rollout = _http(lambda: rollouts.get(session, rollout_id))
    return rollouts.status(session, rollout)


@router.post("/{rollout_id}/pause", response_model=RolloutPublic, responses=errors(404, 409))
def pause_rollout(session: SessionDep, caller: Operator, rollout_id: RolloutId) -> RolloutPublic:
    """Pause a running rollout: no wave advances until it is resumed."""
    return rollouts.public(
        _http(lambda: rollouts.pause(session=session, rollout_id=rollout_id, actor=who(caller)))
    )


@router.post("/{rollout_id}/resume", response_model=RolloutPublic, responses=errors(404, 409))
def resume_rollout(session: SessionDep, caller: Operator, rollout_id: RolloutId) -> RolloutPublic:
    """Resume a paused rollout; the current wave's install deadline counts from now."""
    return rollouts.public(
        _http(lambda: rollouts.resume(session=session, rollout_id=rollout_id, actor=who(caller)))
    )


@router.post("/{rollout_id}/abort", response_model=RolloutPublic, responses=errors(404, 409))
def abort_rollout(session: SessionDep, caller: Operator, rollout_id: RolloutId) -> RolloutPublic:
    """Abort a rollout: every device it reached gets the previous version back."""
    return rollouts.public(
        _http(lambda: rollouts.abort(session=session, rollout_id=rollout_id, actor=who(caller)))
    )
