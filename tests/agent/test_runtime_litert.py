"""The LiteRT backend on the shipped .tflite fixtures (made by tests/fixtures/tflite/make_tflite.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_agent.model import load_model
from edge_agent.sources.synthetic import CLASSES, FEATURE_NAMES
from fleet_protocol import Postprocessing, Preprocessing, Runtime, TensorSpec
from model_compiler.bundle import write_bundle

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tflite"


def _bundle(tmp: Path, name: str, key) -> Path:  # type: ignore[no-untyped-def]
    info = json.loads((FIXTURES / "fixtures.json").read_text())
    io = info["files"][name]
    write_bundle(
        tmp / name,
        {"model.tflite": FIXTURES / name},
        key,
        model_id="sensor-mlp-tflite",
        version="1.0.0",
        runtime=Runtime.LITERT,
        entrypoint="model.tflite",
        inputs=[TensorSpec(name="args_0", shape=io["input"]["shape"], dtype=io["input"]["dtype"])],
        outputs=[TensorSpec(name="logits", shape=io["output"]["shape"], dtype=io["output"]["dtype"])],
        preprocessing=Preprocessing(feature_names=FEATURE_NAMES, **info["preprocessing"]),
        postprocessing=Postprocessing(labels=CLASSES, anomaly_classes=[3]),
    )
    return tmp / name


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    return dict(np.load(FIXTURES / "reference.npz"))


def _scaled(model, x: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    return model.preprocessor.scale(x.astype(np.float32))


def test_litert_fp32_matches_torch(tmp_path: Path, signing_key, reference) -> None:  # type: ignore[no-untyped-def]
    model = load_model(_bundle(tmp_path, "mlp_fp32.tflite", signing_key), [signing_key.public_key()])
    outputs = model.runtime.infer(_scaled(model, reference["x"]))
    assert np.abs(outputs - reference["logits_torch"]).max() < 1e-4


def test_litert_int8_quantizes_inputs_and_keeps_accuracy(tmp_path: Path, signing_key, reference) -> None:  # type: ignore[no-untyped-def]
    model = load_model(_bundle(tmp_path, "mlp_int8.tflite", signing_key), [signing_key.public_key()])
    outputs = model.runtime.infer(_scaled(model, reference["x"]))
    assert outputs.dtype == np.float32, "int8 outputs come back dequantized"
    torch_accuracy = (reference["logits_torch"].argmax(1) == reference["y"]).mean()
    int8_accuracy = (outputs.argmax(1) == reference["y"]).mean()
    assert int8_accuracy >= torch_accuracy - 0.02
    # Extreme logits saturate the calibrated int8 range; the decision must not change.
    agreement = (outputs.argmax(1) == reference["logits_torch"].argmax(1)).mean()
    assert agreement >= 0.97
