"""Accuracy of a model from labels: its records stored whole, joined with their labels.

Only some records are stored whole (the gateway forwards flagged and sampled records and sends
window summaries for the rest), so accuracy is measured on that sample; a record counts in the
window of its ``ts`` (when its input was read), whenever its label came.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, Field
from sqlalchemy import BigInteger, case, cast, func
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import Session, col, select

from cloud_controller.label_models import RecordLabel
from cloud_controller.models import Telemetry


class AccuracyWindow(BaseModel):
    site_id: str
    version: str
    window_start: float = Field(description="Unix seconds; records count in the window of their ts")
    window_end: float
    labelled: int = Field(description="Records stored whole with a label, in the window")
    correct: int = Field(description="Of those, the ones whose predicted class is the label")
    accuracy: float = Field(description="correct / labelled")


class ModelAccuracy(BaseModel):
    model_id: str
    window_s: float
    since: float
    data: list[AccuracyWindow] = Field(description="By site, version and window start")
    count: int


@dataclass(frozen=True)
class Tally:
    """Labelled and correct records of one model version at one site since some time."""

    model_id: str
    version: str
    site_id: str
    labelled: int
    correct: int
    #: The newest record's ts: which version a site runs now.
    last_ts: float

    @property
    def accuracy(self) -> float:
        return self.correct / self.labelled


def _bucket(session: Session, window_s: float) -> ColumnElement[int]:
    """floor(ts / window_s) on either store (SQLite may be built without math functions)."""
    scaled = col(Telemetry.ts) / window_s
    if session.get_bind().dialect.name == "postgresql":
        return cast(func.floor(scaled), BigInteger)
    truncated = cast(scaled, BigInteger)
    return truncated - case((scaled < truncated, 1), else_=0)


def _joined_filters(model_id: str | None, since: float) -> list[ColumnElement[bool]]:
    filters: list[ColumnElement[bool]] = [
        col(Telemetry.ts) >= since,
        col(Telemetry.predicted).is_not(None),
    ]
    if model_id is not None:
        filters.append(col(Telemetry.model_id) == model_id)
    return filters


def _correct() -> ColumnElement[int]:
    return func.sum(case((col(Telemetry.predicted) == col(RecordLabel.label), 1), else_=0))


def _join():  # type: ignore[no-untyped-def]
    return (col(RecordLabel.device_id) == col(Telemetry.device_id)) & (
        col(RecordLabel.seq) == col(Telemetry.seq)
    )


def windows(
    *,
    session: Session,
    model_id: str,
    window_s: float,
    since: float,
    version: str | None = None,
    site: str | None = None,
    limit: int = 1000,
) -> list[AccuracyWindow]:
    """Accuracy per site, version and window of ``window_s`` seconds, of records since ``since``.

    The ``limit`` most recent windows, returned oldest first.
    """
    bucket = _bucket(session, window_s).label("bucket")
    filters = _joined_filters(model_id, since)
    if version is not None:
        filters.append(col(Telemetry.model_version) == version)
    if site is not None:
        filters.append(col(Telemetry.site_id) == site)
    rows = session.exec(
        select(  # type: ignore[call-overload]
            Telemetry.site_id, Telemetry.model_version, bucket, func.count(), _correct()
        )
        .join(RecordLabel, _join())
        .where(*filters)
        .group_by(Telemetry.site_id, Telemetry.model_version, bucket)
        .order_by(bucket.desc(), Telemetry.site_id, Telemetry.model_version)
        .limit(limit)
    ).all()
    found = [
        AccuracyWindow(
            site_id=site_id,
            version=model_version,
            window_start=index * window_s,
            window_end=(index + 1) * window_s,
            labelled=labelled,
            correct=int(correct),
            accuracy=int(correct) / labelled,
        )
        for site_id, model_version, index, labelled, correct in rows
    ]
    found.sort(key=lambda w: (w.site_id, w.version, w.window_start))
    return found


def tallies(*, session: Session, since: float, models: Sequence[str] | None = None) -> list[Tally]:
    """Labelled and correct records per model, version and site since ``since`` (every model, or
    ``models``): what alarms judge and /metrics exports."""
    filters = _joined_filters(None, since)
    if models is not None:
        filters.append(col(Telemetry.model_id).in_(models))
    rows = session.exec(
        select(  # type: ignore[call-overload]
            Telemetry.model_id,
            Telemetry.model_version,
            Telemetry.site_id,
            func.count(),
            _correct(),
            func.max(Telemetry.ts),
        )
        .join(RecordLabel, _join())
        .where(*filters)
        .group_by(Telemetry.model_id, Telemetry.model_version, Telemetry.site_id)
    ).all()
    return [
        Tally(model, version, site, labelled, int(correct), float(last_ts))
        for model, version, site, labelled, correct, last_ts in rows
    ]
