"""Pipeline jobs: start one, list them, read one (steps, logs, rounds, artifacts), cancel one.

The API only writes jobs down; a worker process (`cloud-controller worker`) runs them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query
from sqlmodel import col, select

from cloud_controller import jobs
from cloud_controller.api.deps import Operator, Reader, SessionDep, text_query
from cloud_controller.api.errors import AUTH, BODY, errors
from cloud_controller.audit import who
from cloud_controller.exceptions import Conflict, NotFound
from cloud_controller.job_models import (
    JOB_ID_PATTERN,
    Job,
    JobCreate,
    JobPublic,
    JobsPublic,
    JobState,
    JobStatus,
    ModelRecipe,
)

router = APIRouter(prefix="/jobs", tags=["job"], responses=errors(*AUTH))

JobId = Annotated[str, Path(min_length=10, max_length=10, pattern=JOB_ID_PATTERN)]
#: Newest first, at most this many per answer.
_PAGE = 200


def _http(call: Callable[[], Job]) -> Job:
    try:
        return call()
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except Conflict as exc:
        raise HTTPException(409, str(exc)) from None


@router.post("", response_model=JobPublic, status_code=201, responses=errors(*BODY, 404))
def create_job(session: SessionDep, caller: Operator, body: JobCreate) -> JobPublic:
    """Queue a retraining job for a model (it needs a training recipe); a worker runs it."""
    if session.get(ModelRecipe, body.model_id) is None:
        raise HTTPException(
            404,
            f"Model {body.model_id} has no training recipe: PUT /api/v1/models/{body.model_id}/recipe first",
        )
    return jobs.public(jobs.create(session=session, body=body, actor=who(caller), trigger_ref=who(caller)))


@router.get("", response_model=JobsPublic)
def list_jobs(
    session: SessionDep,
    _: Reader,
    state: Annotated[JobState | None, Query()] = None,
    model_id: Annotated[str | None, text_query(128)] = None,
) -> JobsPublic:
    """List jobs, newest first (at most 200), optionally in one state or of one model."""
    query = select(Job)
    if state is not None:
        query = query.where(Job.state == state.value)
    if model_id is not None:
        query = query.where(Job.model_id == model_id)
    rows = session.exec(query.order_by(col(Job.created_at).desc()).limit(_PAGE)).all()
    return JobsPublic(data=[jobs.public(j) for j in rows], count=len(rows))


@router.get("/{job_id}", response_model=JobStatus, responses=errors(404))
def get_job(session: SessionDep, _: Reader, job_id: JobId) -> JobStatus:
    """A job's steps with their logs, its artifacts and its federated rounds."""
    return jobs.status(session, _http(lambda: jobs.get(session, job_id)))


@router.post("/{job_id}/cancel", response_model=JobPublic, responses=errors(404, 409))
def cancel_job(session: SessionDep, caller: Operator, job_id: JobId) -> JobPublic:
    """Cancel a job: a queued one at once, a running one at its worker's next check."""
    return jobs.public(_http(lambda: jobs.cancel(session=session, job_id=job_id, actor=who(caller))))
