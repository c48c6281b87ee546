"""Every target builds, runs in its runtime, agrees with torch; int8 is smaller and keeps accuracy."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from edge_agent.model import load_model as agent_load_model
from fleet_protocol import MANIFEST_FILE, Runtime
from fleet_protocol.signing import verify_bundle
from model_compiler.build import BuildRequest, build
from model_compiler.evaluate import open_runner
from model_compiler.inputs import load_dataset
from model_compiler.targets.base import Artifact
from tests.compiler.conftest import ALL_TARGETS, ROOT, Built
from tests.compiler.data import sensor_npz, train
from tests.compiler.models import mlp

FP32_TOLERANCE = 1e-3  # max |logit difference| of fp32 engines against torch


def _rows(built: Built) -> dict[str, dict]:  # type: ignore[type-arg]
    return {r.target: r.as_dict() for r in built.report.rows}


def test_every_target_builds_a_verified_bundle_and_a_tar(cnn_build: Built, signing_key) -> None:  # type: ignore[no-untyped-def]
    assert sorted(cnn_build.report.bundles) == sorted(ALL_TARGETS)
    for target, bundle in cnn_build.report.bundles.items():
        manifest = verify_bundle(bundle, [signing_key.public_key()])
        assert manifest.model_id == "vibration-cnn" and manifest.version == "2.1.0"
        assert bundle.with_suffix(".tar").is_file(), target


@pytest.mark.parametrize("target", ["onnx-fp32", "openvino-fp32", "tflite-fp32"])
def test_fp32_targets_agree_with_torch(cnn_build: Built, target: str) -> None:
    row = _rows(cnn_build)[target]
    assert row["max_abs_diff_vs_torch"] < FP32_TOLERANCE
    assert row["accuracy_drop_pts"] == 0.0


@pytest.mark.parametrize("runtime", ["onnx", "openvino", "tflite"])
def test_int8_is_at_least_2_5x_smaller_and_within_2_points(cnn_build: Built, runtime: str) -> None:
    rows = _rows(cnn_build)
    fp32, int8 = rows[f"{runtime}-fp32"], rows[f"{runtime}-int8"]
    assert fp32["size_bytes"] / int8["size_bytes"] >= 2.5
    assert int8["accuracy_drop_pts"] <= 2.0


def test_report_and_manifests_carry_the_table_and_lineage(cnn_build: Built) -> None:
    report = json.loads((cnn_build.out / "report.json").read_text())
    assert [t["target"] for t in report["targets"]] == ALL_TARGETS
    for key in (
        "size_bytes",
        "accuracy",
        "accuracy_drop_pts",
        "latency_p50_ms",
        "latency_p95_ms",
        "memory_mb",
    ):
        assert all(t[key] is not None for t in report["targets"]), key
    manifest = json.loads((cnn_build.report.bundles["onnx-int8"] / MANIFEST_FILE).read_text())
    assert manifest["opset"] == 17
    assert manifest["inputs"][0]["shape"] == [None, 6, 256], "the batch axis stays dynamic"
    assert manifest["metrics"]["accuracy"] == _rows(cnn_build)["onnx-int8"]["accuracy"]
    assert "static QDQ" in manifest["metrics"]["quantization"]
    assert manifest["lineage"]["parent"] == "vibration-cnn@2.0.0"
    assert manifest["lineage"]["training_data_sha256"] is None, "the compiler was not told the training set"
    assert manifest["metrics"]["eval_data_sha256"] == load_dataset(cnn_build.data["eval"]).sha256
    assert (
        manifest["metrics"]["calibration_data_sha256"] == load_dataset(cnn_build.data["calibration"]).sha256
    )
    assert manifest["lineage"]["compiler_version"]


def test_lineage_names_the_training_set_it_was_given_and_a_failed_bundle_leaves_no_staging(
    tmp_path: Path, signing_key, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    data = sensor_npz(tmp_path)
    weights = tmp_path / "mlp.pt"
    torch.save(train(mlp(), data["train"], epochs=1).state_dict(), weights)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the build's temporary files go
    request = BuildRequest(
        model=f"{ROOT}/tests/compiler/models.py:mlp",
        weights=weights,
        eval_data=data["eval"],
        out=tmp_path / "out",
        key=signing_key,
        targets=["onnx-fp32"],
        training_data_sha256=load_dataset(data["train"]).sha256,
    )
    report = build(request)
    manifest = json.loads((report.bundles["onnx-fp32"] / MANIFEST_FILE).read_text())
    assert manifest["lineage"]["training_data_sha256"] == load_dataset(data["train"]).sha256
    assert list(scratch.iterdir()) == []

    request.version = "not-a-version"  # the manifest refuses it: writing the bundle fails
    with pytest.raises(ValueError, match="version"):
        build(request)
    assert list(scratch.iterdir()) == [], "no staging directory left behind"


def test_int8_tflite_falls_back_to_weight_only_when_full_int8_loses_accuracy(cnn_build: Built) -> None:
    manifest = json.loads((cnn_build.report.bundles["tflite-int8"] / MANIFEST_FILE).read_text())
    quantization = manifest["metrics"]["quantization"]
    assert quantization.startswith("ai-edge-quantizer")
    if "dynamic_wi8_afp32" in quantization:
        assert "over the 2.0 allowed" in quantization


@pytest.mark.parametrize("target", ["onnx-int8", "openvino-int8", "tflite-int8", "tflite-fp32"])
def test_the_edge_agent_loads_and_runs_compiled_bundles(mlp_build: Built, signing_key, target: str) -> None:  # type: ignore[no-untyped-def]
    model = agent_load_model(mlp_build.report.bundles[target], [signing_key.public_key()])
    with np.load(mlp_build.data["eval"]) as data:
        x, y = data["x"], data["y"]
    predictions = model.predict(x).predicted
    assert predictions is not None
    assert (predictions == y).mean() >= (mlp_build.report.torch_accuracy or 0) - 0.02
    assert model.manifest.postprocessing.anomaly_classes == [3]


def test_openvino_accuracy_control_is_used_when_a_maximum_drop_is_given(mlp_build: Built) -> None:
    manifest = json.loads((mlp_build.report.bundles["openvino-int8"] / MANIFEST_FILE).read_text())
    assert "quantize_with_accuracy_control, max drop 1.0 points" in manifest["metrics"]["quantization"]
    assert _rows(mlp_build)["openvino-int8"]["accuracy_drop_pts"] <= 1.0


def test_runner_handles_each_runtime_on_one_sample(cnn_build: Built) -> None:
    with np.load(cnn_build.data["eval"]) as data:
        x = data["x"][:1]
    for target, bundle in cnn_build.report.bundles.items():
        manifest = json.loads((bundle / MANIFEST_FILE).read_text())
        entry = manifest["entrypoint"]
        artifact = Artifact(target, Runtime(manifest["runtime"]), "fp32", {entry: bundle / entry}, entry)
        assert open_runner(artifact)(x).shape == (1, 4), target
