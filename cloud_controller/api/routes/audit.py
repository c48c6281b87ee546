"""The audit log, for operators."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlmodel import select

from cloud_controller.api.deps import Operator, SessionDep, text_query
from cloud_controller.api.errors import AUTH, errors
from cloud_controller.models import AuditEntry

router = APIRouter(tags=["audit"], responses=errors(*AUTH))


@router.get("/audit")
def list_audit(
    session: SessionDep,
    _: Operator,
    resource: Annotated[str | None, text_query(200, 'What changed, e.g. "device/dev-1"')] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """Changes, newest first: who, what, when, before and after."""
    query = select(AuditEntry)
    if resource is not None:
        query = query.where(AuditEntry.resource == resource)
    rows = session.exec(query.order_by(AuditEntry.id.desc()).limit(limit)).all()  # type: ignore[union-attr]
    return [r.model_dump(mode="json") for r in rows]
