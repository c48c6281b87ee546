"""Drift references from bundles, and the drift score: PSI against them, mean shift without."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlmodel import Session, select

from cloud_controller.db import make_engine
from cloud_controller.models import Drift
from fleet_protocol import DRIFT_REFERENCE_FILE
from model_compiler.archive import pack
from tests.controller.conftest import Controller
from tests.controller.factories import batch, histogram_drift, rebundle


def _upload(ctl: Controller, bundle_dir: Path) -> httpx.Response:
    with ctl.client("operator") as client:
        return client.post("/api/v1/bundles", content=pack(bundle_dir).read_bytes())


def _ingest_drift(ctl: Controller, *windows) -> None:  # type: ignore[no-untyped-def]
    payload = batch(devices={"dev-d1": range(1, 2)}).model_copy(update={"drift": list(windows)})
    with ctl.client("gateway") as client:
        response = client.post("/api/v1/ingest", content=payload.model_dump_json())
    assert response.status_code == 200, response.text


def _scores(ctl: Controller) -> list[tuple[float, str | None, float | None]]:
    engine = make_engine(ctl.database_url)
    try:
        with Session(engine) as session:
            rows = session.exec(select(Drift).order_by(Drift.window_start)).all()  # type: ignore[arg-type]
            return [(r.window_start, r.score_method, r.score) for r in rows]
    finally:
        engine.dispose()


def test_drift_score_is_psi_against_the_bundle_reference(controller: Controller, bundles) -> None:  # type: ignore[no-untyped-def]
    reference = json.loads((bundles["onnx-int8"] / DRIFT_REFERENCE_FILE).read_text())
    assert _upload(controller, bundles["onnx-int8"]).status_code == 201
    with controller.client("viewer") as client:
        (version,) = client.get("/api/v1/models/versions", params={"model_id": "sensor-mlp"}).json()
    assert version["drift_reference"]["counts"] == reference["counts"]
    names, counts = reference["feature_names"], reference["counts"]
    proportional = [[3 * c for c in feature] for feature in counts]
    # Every feature's mass moved into its top two bins.
    shifted = [[0] * (len(feature) - 2) + [500, 500] for feature in counts]
    _ingest_drift(
        controller, histogram_drift(0.0, names, proportional), histogram_drift(60.0, names, shifted)
    )
    (_, method0, psi0), (_, method1, psi1) = _scores(controller)
    assert (method0, method1) == ("psi", "psi")
    assert psi0 is not None and psi0 < 0.01
    assert psi1 is not None and psi1 > 0.25
    with controller.client("viewer") as client:
        metrics = client.get("/metrics").text
    (latest,) = [
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith('edgefleet_drift_score{model="sensor-mlp@1.0.0",site="site-a"}')
    ]
    assert latest == pytest.approx(psi1), "the metric shows the latest window's score"


def test_a_window_of_a_few_records_is_stored_but_not_scored(controller: Controller, bundles) -> None:  # type: ignore[no-untyped-def]
    reference = json.loads((bundles["onnx-int8"] / DRIFT_REFERENCE_FILE).read_text())
    assert _upload(controller, bundles["onnx-int8"]).status_code == 201
    names, counts = reference["feature_names"], reference["counts"]
    few = [[0] * (len(feature) - 1) + [9] for feature in counts]  # 9 records, all in one bin
    enough = [[3 * c for c in feature] for feature in counts]
    _ingest_drift(controller, histogram_drift(0.0, names, few), histogram_drift(60.0, names, enough))
    (_, method0, score0), (_, method1, score1) = _scores(controller)
    assert (method0, score0) == (None, None), "9 records: no score rather than a false alarm"
    assert method1 == "psi" and score1 is not None and score1 < 0.01


def test_drift_score_is_mean_shift_when_histograms_do_not_match_the_reference_bins(
    sqlite_controller: Controller, bundles
) -> None:  # type: ignore[no-untyped-def]
    reference = json.loads((bundles["onnx-int8"] / DRIFT_REFERENCE_FILE).read_text())
    assert _upload(sqlite_controller, bundles["onnx-int8"]).status_code == 201
    names = reference["feature_names"]
    three_bins = [[20, 20, 20] for _ in names]  # 60 records: enough to be scored
    first, later = histogram_drift(0.0, names, three_bins), histogram_drift(60.0, names, three_bins)
    later = later.model_copy(update={"mean": [2.0] * len(names)})  # 2 std from the first window
    _ingest_drift(sqlite_controller, first, later)
    assert _scores(sqlite_controller) == [(0.0, "mean_shift", 0.0), (60.0, "mean_shift", 2.0)]


def test_bundle_without_a_drift_reference_is_registered_without_one(
    sqlite_controller: Controller, bundles, signing_key: Ed25519PrivateKey, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    bare = rebundle(
        bundles["onnx-fp32"], tmp_path / "bare", signing_key, version="2.0.0", drift_reference=None
    )
    response = _upload(sqlite_controller, bare)
    assert response.status_code == 201, response.text
    with sqlite_controller.client("viewer") as client:
        (version,) = client.get("/api/v1/models/versions").json()
    assert (version["version"], version["drift_reference"]) == ("2.0.0", None)


def test_bundle_with_an_invalid_drift_reference_is_refused_with_the_reason(
    sqlite_controller: Controller, bundles, signing_key: Ed25519PrivateKey, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    reference = json.loads((bundles["onnx-fp32"] / DRIFT_REFERENCE_FILE).read_text())
    reference["counts"][0] = reference["counts"][0][:-1]  # one count short of the edges
    broken = rebundle(
        bundles["onnx-fp32"],
        tmp_path / "broken",
        signing_key,
        version="2.0.1",
        drift_reference=json.dumps(reference).encode(),
    )
    response = _upload(sqlite_controller, broken)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert detail.startswith("Bundle refused: drift_reference.json is invalid")
    assert "feature 0:" in detail
    with sqlite_controller.client("viewer") as client:
        assert client.get("/api/v1/models/versions").json() == []
