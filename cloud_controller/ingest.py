"""Stores an ingest batch in one transaction, idempotent on (device_id, seq)."""

from __future__ import annotations

import time

from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, select

from cloud_controller.models import Device, Drift, Event, Gateway, Site, Telemetry
from fleet_protocol.ingest import DriftSummary, IngestBatch, IngestResult


def _insert(session: Session):  # type: ignore[no-untyped-def]
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def store_batch(*, session: Session, batch: IngestBatch) -> IngestResult:
    """Everything or nothing: any error rolls the whole batch back."""
    insert = _insert(session)
    now = time.time()
    # Concurrent batches of one site race to create it (and its devices): let the database decide.
    session.execute(
        insert(Site).values(id=batch.site, name=batch.site, created_at=now).on_conflict_do_nothing()
    )
    session.execute(
        insert(Gateway)
        .values(
            id=batch.gateway_id, site_id=batch.site, name=batch.gateway_id, records_ingested=0, created_at=now
        )
        .on_conflict_do_nothing()
    )
    accepted = 0
    if batch.records:
        rows = [
            {
                "device_id": r.device_id,
                "seq": r.seq,
                "ts": r.ts,
                "site_id": batch.site,
                "model_id": r.model_id,
                "model_version": r.model_version,
                "predicted": r.predicted,
                "confidence": r.confidence,
                "anomaly": r.anomaly,
                "record": r.model_dump(mode="json", exclude_none=True),
                "received_at": now,
            }
            for r in batch.records
        ]
        statement = insert(Telemetry).values(rows).on_conflict_do_nothing().returning(Telemetry.seq)
        accepted = len(session.execute(statement).all())
    for state in batch.devices:
        session.execute(
            insert(Device)
            .values(
                id=state.device_id, site_id=batch.site, labels={}, online=False, last_seq=0, created_at=now
            )
            .on_conflict_do_nothing()
        )
        device = session.get(Device, state.device_id)
        assert device is not None
        device.online = state.online
        device.health = state.health.value
        device.reason = state.reason
        device.model_id = state.model_id
        device.model_version = state.model_version
        device.runtime = state.runtime
        device.last_seq = max(device.last_seq, state.last_seq)
        device.last_seen = state.ts
    gateway = session.get(Gateway, batch.gateway_id)
    assert gateway is not None
    gateway.last_seen, gateway.last_batch_id = now, batch.batch_id
    gateway.records_ingested += accepted
    for event in batch.events:
        session.add(
            Event(
                device_id=event.device_id,
                ts=event.ts,
                kind=event.kind,
                severity=event.severity.value,
                message=event.message,
                data=event.data,
            )
        )
    drift_stored = 0
    if batch.drift:
        rows = [
            {
                "site_id": batch.site,
                "model_id": d.model_id,
                "model_version": d.model_version,
                "window_start": d.window_start,
                "window_end": d.window_end,
                "count": d.count,
                "summary": d.model_dump(mode="json"),
                "score": _drift_score(session, batch.site, d, batch.drift),
            }
            for d in batch.drift
        ]
        statement = insert(Drift).values(rows).on_conflict_do_nothing().returning(Drift.id)
        drift_stored = len(session.execute(statement).all())
    session.commit()
    return IngestResult(
        batch_id=batch.batch_id,
        accepted=accepted,
        duplicates=len(batch.records) - accepted,
        devices_updated=len(batch.devices),
        drift_stored=drift_stored,
        events_stored=len(batch.events),
    )


def _drift_score(
    session: Session, site: str, summary: DriftSummary, batch: list[DriftSummary]
) -> float | None:
    """Mean over features of |window mean - reference mean| / reference std.

    The reference is the first window stored for this model version at this site: drift is
    measured against what the model saw when it was rolled out.
    """
    reference = session.exec(
        select(Drift)
        .where(
            Drift.site_id == site,
            Drift.model_id == summary.model_id,
            Drift.model_version == summary.model_version,
        )
        .order_by(Drift.window_start)  # type: ignore[arg-type]
        .limit(1)
    ).first()
    if reference is not None:
        ref_mean, ref_std = reference.summary.get("mean", []), reference.summary.get("std", [])
    else:  # no window stored yet: the earliest of this batch is the reference
        first = min(
            (d for d in batch if (d.model_id, d.model_version) == (summary.model_id, summary.model_version)),
            key=lambda d: d.window_start,
        )
        ref_mean, ref_std = first.mean, first.std
    if len(ref_mean) != len(summary.mean) or not ref_mean:
        return None
    shifts = [
        abs(m - r) / (s if s > 0 else 1.0) for m, r, s in zip(summary.mean, ref_mean, ref_std, strict=False)
    ]
    return sum(shifts) / len(shifts)
