"""One real build per model and run, shared by the compiler tests in every xdist worker: a CNN (sizes,
speed), an MLP (the agent)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from model_compiler.build import BuildReport, BuildRequest, build
from tests.compiler.data import sensor_npz, train, vibration_npz
from tests.compiler.models import cnn, mlp
from tests.utils.once_per_run import once_per_run

ROOT = Path(__file__).resolve().parents[2]
ALL_TARGETS = ["onnx-fp32", "onnx-int8", "openvino-fp32", "openvino-int8", "tflite-fp32", "tflite-int8"]


@dataclass
class Built:
    report: BuildReport
    data: dict[str, Path]
    weights: Path
    spec: str
    out: Path


def _build(tmp: Path, spec: str, data: dict[str, Path], weights: Path, key, **extra) -> Built:  # type: ignore[no-untyped-def]
    request = BuildRequest(
        model=spec,
        weights=weights,
        calibration=data["calibration"],
        eval_data=data["eval"],
        out=tmp / "out",
        key=key,
        targets=ALL_TARGETS,
        **extra,
    )
    return Built(build(request), data, weights, spec, tmp / "out")


@pytest.fixture(scope="session")
def cnn_build(tmp_path_factory: pytest.TempPathFactory, signing_key) -> Built:  # type: ignore[no-untyped-def]
    return once_per_run(tmp_path_factory, "cnn-build", lambda tmp: _cnn_build(tmp, signing_key))


def _cnn_build(tmp: Path, signing_key) -> Built:  # type: ignore[no-untyped-def]
    data = vibration_npz(tmp)
    weights = tmp / "cnn.pt"
    torch.save(train(cnn(), data["train"], epochs=3).state_dict(), weights)
    return _build(
        tmp,
        f"{ROOT}/tests/compiler/models.py:cnn",
        data,
        weights,
        signing_key,
        model_id="vibration-cnn",
        version="2.1.0",
        parent="vibration-cnn@2.0.0",
    )


@pytest.fixture(scope="session")
def mlp_build(tmp_path_factory: pytest.TempPathFactory, signing_key) -> Built:  # type: ignore[no-untyped-def]
    return once_per_run(tmp_path_factory, "mlp-build", lambda tmp: _mlp_build(tmp, signing_key))


def _mlp_build(tmp: Path, signing_key) -> Built:  # type: ignore[no-untyped-def]
    data = sensor_npz(tmp)
    weights = tmp / "mlp.pt"
    torch.save(train(mlp(), data["train"], epochs=10).state_dict(), weights)
    return _build(
        tmp,
        f"{ROOT}/tests/compiler/models.py:mlp",
        data,
        weights,
        signing_key,
        model_id="sensor-mlp",
        anomaly_classes=[3],
        max_drop_pts=1.0,
    )
