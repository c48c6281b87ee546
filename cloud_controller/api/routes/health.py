"""Liveness, readiness, metrics."""

from __future__ import annotations

import secrets

from fastapi import APIRouter, HTTPException, Request, Response
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from cloud_controller.api.deps import SessionDep
from cloud_controller.api.errors import errors

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up (answered by the event loop itself: a stalled loop shows here)."""
    return {"status": "ok"}


@router.get("/readyz", responses=errors(503))
def readyz(session: SessionDep) -> dict[str, str]:
    """The database answers."""
    try:
        session.exec(text("SELECT 1"))  # type: ignore[call-overload]
    except SQLAlchemyError as exc:
        raise HTTPException(503, f"Database unavailable: {exc.__class__.__name__}") from None
    return {"status": "ready"}


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
            "description": "Prometheus text exposition format",
        },
        **errors(401),
    },
)
def metrics(request: Request) -> Response:
    """Prometheus text format; behind ``Authorization: Bearer <metrics_token>`` when that is set."""
    expected = request.app.state.settings.metrics_token
    if expected is not None:
        # Read from the headers, not declared: with no metrics_token /metrics asks for nothing,
        # and the published schema must not say otherwise.
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        # Compared in constant time: the answer's timing must not tell how much of a guess was right.
        right = secrets.compare_digest(given.encode(), expected.get_secret_value().encode())
        if scheme.lower() != "bearer" or not right:
            raise HTTPException(
                401, "/metrics needs the metrics token (metrics_token)", {"WWW-Authenticate": "Bearer"}
            )
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
