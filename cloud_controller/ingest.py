"""Stores an ingest batch in one transaction, idempotent on (device_id, seq) and on window keys."""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, select

from cloud_controller.labels import from_devices, from_records, store_labels
from cloud_controller.models import Device, Drift, Event, Gateway, ModelVersion, Site, Summary, Telemetry
from fleet_protocol.ingest import DriftSummary, IngestBatch, IngestResult, WindowSummary
from fleet_protocol.messages import INT64_MAX, DeviceEvent
from fleet_protocol.reference import DriftReference, population_stability_index

log = logging.getLogger(__name__)

#: Rows per INSERT: 14 columns x 1000 stays under PostgreSQL's 65535 bound parameters.
_SUMMARY_CHUNK = 1000


def _insert(session: Session):  # type: ignore[no-untyped-def]
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def store_batch(*, session: Session, batch: IngestBatch) -> IngestResult:
    """Everything or nothing: any error rolls the whole batch back.

    ``labels_stored`` counts new labels and corrections, inline labels of records (source
    "inline") included; a label sent again is not counted. Labels of a device registered at
    another site are refused (logged), the rest of the batch is stored.
    """
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
        # A version 1 state carries no reason: the device's previous one no longer holds either.
        device.model_reason = state.model_reason.value if state.model_reason is not None else None
        # Likewise its update: the state carries the last one, or none.
        ota = state.ota
        device.ota = ota.model_dump(mode="json") if ota is not None else None
        device.ota_state = ota.state.value if ota is not None else None
        device.ota_rollout_id = ota.rollout_id if ota is not None else None
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
                rollout_id=_rollout_of(event),
            )
        )
    summaries_stored = 0
    for start in range(0, len(batch.summaries), _SUMMARY_CHUNK):
        rows = [_summary_row(s, batch.site, now) for s in batch.summaries[start : start + _SUMMARY_CHUNK]]
        statement = insert(Summary).values(rows).on_conflict_do_nothing().returning(Summary.first_seq)
        summaries_stored += len(session.execute(statement).all())
    drift_stored = 0
    if batch.drift:
        references: dict[tuple[str, str], DriftReference | None] = {}
        rows = [
            {
                "site_id": batch.site,
                "model_id": d.model_id,
                "model_version": d.model_version,
                "window_start": d.window_start,
                "window_end": d.window_end,
                "count": d.count,
                "summary": d.model_dump(mode="json"),
                **_drift_score(session, batch.site, d, batch.drift, references),
            }
            for d in batch.drift
        ]
        statement = insert(Drift).values(rows).on_conflict_do_nothing().returning(Drift.id)
        drift_stored = len(session.execute(statement).all())
    # After the devices' states: a device the batch registers is one of its site's.
    labels = store_labels(
        session=session,
        site=batch.site,
        labels=from_records(batch.records) + from_devices(batch.labels),
        now=now,
        known_devices_only=False,
    )
    if labels.refused_devices:
        log.warning(
            "batch %s of site %s: labels of devices of another site refused: %s",
            batch.batch_id,
            batch.site,
            ", ".join(labels.refused_devices[:10]),
        )
    session.commit()
    return IngestResult(
        batch_id=batch.batch_id,
        accepted=accepted,
        duplicates=len(batch.records) - accepted,
        devices_updated=len(batch.devices),
        drift_stored=drift_stored,
        events_stored=len(batch.events),
        summaries_stored=summaries_stored,
        labels_stored=labels.stored,
    )


def _rollout_of(event: DeviceEvent) -> str | None:
    """The rollout an ``ota.*`` event's `OtaStatus` names (the event is stored whatever its data)."""
    if not event.kind.startswith("ota."):
        return None
    named = event.data.get("rollout_id")
    return named if isinstance(named, str) and 0 < len(named) <= 64 else None


def _summary_row(summary: WindowSummary, site: str, now: float) -> dict[str, Any]:
    """The window_summary row of one summary."""
    return {
        "device_id": summary.device_id,
        "window_start": summary.window_start,
        "first_seq": summary.first_seq,
        "window_end": summary.window_end,
        "last_seq": summary.last_seq,
        "site_id": site,
        "model_id": summary.model_id,
        "model_version": summary.model_version,
        "count": summary.count,
        "anomalies": summary.anomalies,
        "low_confidence": summary.low_confidence,
        "forwarded": summary.forwarded,
        "summary": summary.model_dump(mode="json"),
        "received_at": now,
    }


#: Windows with fewer records are stored but not scored: too few to tell drift from chance.
MIN_RECORDS_TO_SCORE = 50


def _drift_score(
    session: Session,
    site: str,
    summary: DriftSummary,
    batch: list[DriftSummary],
    references: dict[tuple[str, str], DriftReference | None],
) -> dict[str, Any]:
    """``score`` and ``score_method`` of one window.

    "psi": the window carries histograms and its model version has a drift reference over the
    same bins (as many features, as many bins each): the mean over features of the population
    stability index against the reference's training counts. Otherwise "mean_shift": see
    `_mean_shift`. ``references`` caches the model versions' references for the batch.
    """
    if summary.count < MIN_RECORDS_TO_SCORE:
        # A handful of records makes any histogram look shifted (PSI 3.8 seen on 9 records, no drift).
        return {"score": None, "score_method": None}
    key = (summary.model_id, summary.model_version)
    if key not in references:
        references[key] = _reference(session, *key)
    reference = references[key]
    if summary.histograms is not None and reference is not None and _same_bins(reference, summary.histograms):
        indices = [
            population_stability_index(counts, observed)
            for counts, observed in zip(reference.counts, summary.histograms, strict=True)
        ]
        return {"score": sum(indices) / len(indices), "score_method": "psi"}
    score = _mean_shift(session, site, summary, batch)
    return {"score": score, "score_method": "mean_shift" if score is not None else None}


def _reference(session: Session, model_id: str, version: str) -> DriftReference | None:
    """The drift reference a model version's bundles carried, if any."""
    stored = session.exec(
        select(ModelVersion.drift_reference).where(
            ModelVersion.model_id == model_id, ModelVersion.version == version
        )
    ).first()
    return DriftReference.model_validate(stored) if stored else None


def _same_bins(reference: DriftReference, histograms: list[list[int]]) -> bool:
    """Whether the histograms are counts over the reference's bins: as many features, bins and counts."""
    return len(histograms) == len(reference.counts) and all(
        len(observed) == len(counts) and all(0 <= c <= INT64_MAX for c in observed)
        for observed, counts in zip(histograms, reference.counts, strict=True)
    )


def _mean_shift(
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
