"""Each backend loads a real model from a signed bundle and agrees with torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edge_agent.exceptions import ModelLoadError, ModelSpecMismatch
from edge_agent.model import load_model
from fleet_protocol import Runtime
from model_compiler.bundle import write_bundle
from simulators.model_factory import MLP, TrainedModel, export_onnx, manifest_fields

TOLERANCE = 1e-4  # fp32 engines vs torch, on logits


def _scaled(trained: TrainedModel) -> np.ndarray:
    return ((trained.x_eval - trained.mean) / trained.scale).astype(np.float32)


@pytest.mark.parametrize("bundle", ["onnx-fp32", "openvino-fp32"])
def test_fp32_runtime_matches_torch(bundle: str, bundles, trained_mlp, signing_key) -> None:  # type: ignore[no-untyped-def]
    model = load_model(bundles[bundle], [signing_key.public_key()])
    outputs = model.runtime.infer(_scaled(trained_mlp))
    reference = trained_mlp.logits(trained_mlp.x_eval)
    assert outputs.shape == reference.shape
    assert np.abs(outputs - reference).max() < TOLERANCE


def test_openvino_reused_request_never_returns_a_stale_result(bundles, trained_mlp, signing_key) -> None:  # type: ignore[no-untyped-def]
    model = load_model(bundles["openvino-fp32"], [signing_key.public_key()])
    x = _scaled(trained_mlp)[:50]
    one_by_one = np.concatenate([model.runtime.infer(x[i : i + 1]) for i in range(50)])
    assert np.array_equal(one_by_one, model.runtime.infer(x))
    assert len({tuple(np.round(r, 4)) for r in one_by_one}) > 40


def test_onnx_int8_keeps_accuracy_within_two_points(bundles, trained_mlp, signing_key) -> None:  # type: ignore[no-untyped-def]
    model = load_model(bundles["onnx-int8"], [signing_key.public_key()])
    predicted = model.runtime.infer(_scaled(trained_mlp)).argmax(axis=1)
    accuracy = float((predicted == trained_mlp.y_eval).mean())
    assert accuracy >= trained_mlp.accuracy - 0.02


def test_predict_flags_anomalies_and_low_confidence(bundles, trained_mlp, signing_key) -> None:  # type: ignore[no-untyped-def]
    model = load_model(bundles["onnx-fp32"], [signing_key.public_key()])
    p = model.predict(_scaled(trained_mlp))
    assert p.predicted is not None and p.confidence is not None
    assert np.array_equal(p.anomaly, p.predicted == 3)
    assert p.anomaly.sum() == pytest.approx((trained_mlp.y_eval == 3).sum(), abs=15)
    assert ((p.confidence >= 0) & (p.confidence <= 1)).all()
    assert np.array_equal(p.low_confidence, p.confidence < 0.5)


def test_model_whose_input_shape_mismatches_the_manifest_is_refused(
    tmp_path: Path, trained_mlp, signing_key
) -> None:  # type: ignore[no-untyped-def]
    narrow = TrainedModel(
        MLP(n_in=8),
        trained_mlp.mean[:8],
        trained_mlp.scale[:8],
        0.0,
        trained_mlp.x_eval,
        trained_mlp.y_eval,
        trained_mlp.x_train,
    )
    onnx_path = tmp_path / "narrow.onnx"
    with torch.no_grad():
        torch.onnx.export(
            narrow.module, (torch.zeros(1, 8),), str(onnx_path), input_names=["features"], dynamo=False
        )
    fields = manifest_fields(
        trained_mlp, model_id="narrow", version="1.0.0", runtime=Runtime.ONNXRUNTIME, entrypoint="model.onnx"
    )
    write_bundle(tmp_path / "bundle", {"model.onnx": onnx_path}, signing_key, **fields)
    with pytest.raises(
        ModelSpecMismatch, match=r"input shape \[1, 8\] does not match manifest shape \[None, 16\]"
    ):
        load_model(tmp_path / "bundle", [signing_key.public_key()])


def test_missing_model_bundle_is_a_clear_error(tmp_path: Path, signing_key) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "nowhere", [signing_key.public_key()])


def test_corrupt_model_file_with_valid_digest_is_a_clear_error(
    tmp_path: Path, trained_mlp, signing_key
) -> None:  # type: ignore[no-untyped-def]
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not an onnx file")
    fields = manifest_fields(
        trained_mlp, model_id="junk", version="1.0.0", runtime=Runtime.ONNXRUNTIME, entrypoint="model.onnx"
    )
    write_bundle(tmp_path / "bundle", {"model.onnx": junk}, signing_key, **fields)
    with pytest.raises(ModelLoadError, match="onnxruntime cannot load model.onnx"):
        load_model(tmp_path / "bundle", [signing_key.public_key()])


def test_static_batch_onnx_model_runs_micro_batches(tmp_path: Path, trained_mlp, signing_key) -> None:  # type: ignore[no-untyped-def]
    onnx_path = export_onnx(trained_mlp, tmp_path / "static.onnx", dynamic_batch=False)
    fields = manifest_fields(
        trained_mlp,
        model_id="static",
        version="1.0.0",
        runtime=Runtime.ONNXRUNTIME,
        entrypoint="model.onnx",
        batch=1,
    )
    write_bundle(tmp_path / "bundle", {"model.onnx": onnx_path}, signing_key, **fields)
    model = load_model(tmp_path / "bundle", [signing_key.public_key()])
    outputs = model.runtime.infer(_scaled(trained_mlp)[:37])
    assert np.abs(outputs - trained_mlp.logits(trained_mlp.x_eval[:37])).max() < TOLERANCE
