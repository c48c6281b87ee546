"""Payloads for controller tests."""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleet_protocol import (
    DRIFT_REFERENCE_FILE,
    MANIFEST_FILE,
    BundleManifest,
    Health,
    ReportedState,
    TelemetryRecord,
)
from fleet_protocol.ingest import ClassStats, DriftSummary, IngestBatch, WindowSummary
from model_compiler.bundle import write_bundle


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


def histogram_drift(window: float, feature_names: list[str], histograms: list[list[int]]) -> DriftSummary:
    """A drift window of the bundles' model carrying per-feature histograms."""
    n = len(feature_names)
    return DriftSummary(
        model_id="sensor-mlp",
        model_version="1.0.0",
        window_start=window,
        window_end=window + 60,
        count=sum(histograms[0]) if histograms else 0,
        feature_names=feature_names,
        mean=[0.0] * n,
        std=[1.0] * n,
        histograms=histograms,
    )


def summary(device: str, window: float, first_seq: int = 1, count: int = 60) -> WindowSummary:
    """One piece of a device's 60 s window: records first_seq .. first_seq + count - 1."""
    return WindowSummary(
        device_id=device,
        model_id="sensor-mlp",
        model_version="1.0.0",
        window_start=window,
        window_end=window + 60,
        first_seq=first_seq,
        last_seq=first_seq + count - 1,
        count=count,
        anomalies=2,
        low_confidence=1,
        forwarded=3,
        feature_names=["temp", "vib"],
        min=[20.0, 0.0],
        max=[30.0, 1.0],
        mean=[25.0 + window / 60, 0.5],
        std=[2.0, 0.1],
        classes=[
            ClassStats(predicted=0, count=count - 2, mean_confidence=0.9),
            ClassStats(predicted=3, count=2),
        ],
    )


def rebundle(
    source: Path, out: Path, key: Ed25519PrivateKey, *, version: str, drift_reference: bytes | None
) -> Path:
    """A signed bundle like ``source`` at ``version``, with this drift_reference.json (None: none)."""
    manifest = BundleManifest.model_validate_json((source / MANIFEST_FILE).read_bytes())
    files: dict[str, str | Path] = {n: source / n for n in manifest.files if n != DRIFT_REFERENCE_FILE}
    if drift_reference is not None:
        files[DRIFT_REFERENCE_FILE] = out.with_suffix(".reference.json")
        out.with_suffix(".reference.json").write_bytes(drift_reference)
    fields = manifest.model_dump(exclude={"files", "schema_version"}) | {"version": version}
    write_bundle(out, files, key, **fields)
    return out


def bulk_drift(database_url: str, keys: list[tuple[str, str, str]], windows: int) -> None:
    """``windows`` drift windows of each (site, model_id, version), one a minute from 0, scored by
    `bulk_score`, inserted in bulk (one transaction on SQLite, COPY on PostgreSQL)."""
    summary = json.dumps(drift(0.0).model_dump(mode="json"))
    columns = (
        "site_id, model_id, model_version, window_start, window_end, count, summary, score, score_method"
    )

    def rows() -> Iterator[tuple[object, ...]]:
        for site, model, version in keys:
            for w in range(windows):
                yield site, model, version, 60.0 * w, 60.0 * w + 60, 100, summary, bulk_score(w), "mean_shift"

    if database_url.startswith("sqlite:///"):
        with sqlite3.connect(database_url.removeprefix("sqlite:///")) as conn:
            conn.executemany(f"INSERT INTO drift ({columns}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows())
        return
    url = database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url) as conn, conn.cursor().copy(f"COPY drift ({columns}) FROM STDIN") as copy:
        for row in rows():
            copy.write_row(row)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE drift")  # what autovacuum does to a table that grew


def bulk_score(window: int) -> float:
    """The score `bulk_drift` gives window number ``window``."""
    return (window % 97) / 10
