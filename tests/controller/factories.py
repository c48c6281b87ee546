"""Payloads for controller tests."""

from __future__ import annotations

import uuid

from fleet_protocol import Health, ReportedState, TelemetryRecord
from fleet_protocol.ingest import DriftSummary, IngestBatch


def records(device: str, seqs: range, *, version: str = "1.0.0") -> list[TelemetryRecord]:
    return [
        TelemetryRecord(
            device_id=device,
            seq=s,
            ts=1_700_000_000.0 + s,
            model_id="sensor-mlp",
            model_version=version,
            outputs=[0.1, 0.2, 0.3, 0.4],
            predicted=s % 4,
            confidence=0.9,
            anomaly=s % 4 == 3,
        )
        for s in seqs
    ]


def batch(site: str = "site-a", devices: dict[str, range] | None = None, **extra: object) -> IngestBatch:
    recs = [r for device, seqs in (devices or {"dev-1": range(1, 11)}).items() for r in records(device, seqs)]
    return IngestBatch(site=site, gateway_id="gw-1", batch_id=uuid.uuid4().hex, records=recs, **extra)  # type: ignore[arg-type]


def state(device: str, site: str = "site-a", online: bool = True) -> ReportedState:
    return ReportedState(
        device_id=device,
        site=site,
        online=online,
        health=Health.OK,
        model_id="sensor-mlp",
        model_version="1.0.0",
        runtime="onnxruntime",
        last_seq=10,
    )


def drift(window: float) -> DriftSummary:
    return DriftSummary(
        model_id="sensor-mlp",
        model_version="1.0.0",
        window_start=window,
        window_end=window + 60,
        count=100,
        feature_names=["a", "b"],
        mean=[0.1 * window, 0.2],
        std=[1.0, 1.0],
    )
