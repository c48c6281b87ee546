"""Every change goes into the audit log: who, what, when, before and after."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, SQLModel

from cloud_controller.models import ApiToken, AuditEntry


def snapshot(row: SQLModel | None) -> dict[str, Any] | None:
    return row.model_dump(mode="json") if row is not None else None


def record(
    *,
    session: Session,
    actor: ApiToken | str,
    action: str,
    resource: str,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> None:
    """Add an entry to the caller's transaction: the change and its record commit together.

    ``actor``: a token, or a name for the controller's own doings ("rollout-engine").
    """
    session.add(
        AuditEntry(
            actor=actor if isinstance(actor, str) else who(actor),
            action=action,
            resource=resource,
            before=before,
            after=after,
        )
    )


def who(token: ApiToken) -> str:
    """How a token's holder is named in the audit log and in what it created."""
    return f"{token.role.value}:{token.name}"
