"""Which version is in production, and which number a candidate gets."""

from __future__ import annotations

import re

from sqlmodel import Session, col, select

from cloud_controller.models import ModelVersion, Stage

_SEMVER = re.compile(r"^(\d+)\.(\d+)\.(\d+)")


def production(session: Session, model_id: str) -> ModelVersion | None:
    """The model's production version (the newest, if several are marked so)."""
    return session.exec(
        select(ModelVersion)
        .where(ModelVersion.model_id == model_id, ModelVersion.stage == Stage.PRODUCTION)
        .order_by(col(ModelVersion.id).desc())
    ).first()


def next_version(session: Session, model_id: str) -> str:
    """One patch above the highest version of the model registered (1.0.0 for the first)."""
    numbers = [
        tuple(int(g) for g in m.groups())
        for v in session.exec(select(ModelVersion.version).where(ModelVersion.model_id == model_id)).all()
        if (m := _SEMVER.match(v))
    ]
    if not numbers:
        return "1.0.0"
    major, minor, patch = max(numbers)
    return f"{major}.{minor}.{patch + 1}"
