"""Benchmark of the model compiler on a model where compute dominates; prints one JSON object.

A 1-D CNN over a 6-channel, 256-sample window (vibration / activity recognition), trained here
on generated data. Figures: int8/fp32 size ratio and int8 speed-up (single-sample p50 latency,
one thread, measured by the compiler in each runtime) for ONNX Runtime and OpenVINO; the worst
int8 accuracy drop of all targets; NNCF 50 % magnitude pruning: gzip size ratio and accuracy
drop; wall time of a full six-target build.

Run: ``.venv/bin/python bench/compiler.py`` (about a minute).
"""

from __future__ import annotations

import gzip
import json
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._machine import machine  # noqa: E402
from fleet_protocol.signing import generate_private_key  # noqa: E402
from model_compiler.build import BuildRequest, build  # noqa: E402
from tests.compiler.data import train, vibration_npz  # noqa: E402
from tests.compiler.models import cnn  # noqa: E402

TARGETS = ["onnx-fp32", "onnx-int8", "openvino-fp32", "openvino-int8", "tflite-fp32", "tflite-int8"]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = vibration_npz(work)
        weights = work / "cnn.pt"
        torch.save(train(cnn(), data["train"], epochs=3).state_dict(), weights)
        key = generate_private_key()
        spec = f"{ROOT}/tests/compiler/models.py:cnn"
        report = build(
            BuildRequest(
                model=spec,
                weights=weights,
                calibration=data["calibration"],
                eval_data=data["eval"],
                out=work / "full",
                key=key,
                targets=TARGETS,
            )
        )
        rows = {r.target: r for r in report.rows}
        pruned = build(
            BuildRequest(
                model=spec,
                weights=weights,
                eval_data=data["eval"],
                train_data=data["train"],
                out=work / "pruned",
                key=key,
                targets=["onnx-fp32"],
                prune_ratio=0.5,
            )
        )
        dense_gz = len(gzip.compress((report.bundles["onnx-fp32"] / "model.onnx").read_bytes()))
        pruned_gz = len(gzip.compress((pruned.bundles["onnx-fp32"] / "model.onnx").read_bytes()))
        assert report.torch_accuracy is not None and pruned.torch_accuracy is not None

        def ratio(runtime: str, field: str) -> float:
            fp32, int8 = getattr(rows[f"{runtime}-fp32"], field), getattr(rows[f"{runtime}-int8"], field)
            return round(int8 / fp32 if field == "size_bytes" else fp32 / int8, 3)

        print(
            json.dumps(
                {
                    "int8_size_ratio_onnx": ratio("onnx", "size_bytes"),
                    "int8_size_ratio_openvino": ratio("openvino", "size_bytes"),
                    "int8_size_ratio_tflite": ratio("tflite", "size_bytes"),
                    "int8_speedup_onnx": ratio("onnx", "latency_p50_ms"),
                    "int8_speedup_openvino": ratio("openvino", "latency_p50_ms"),
                    "int8_speedup_tflite": ratio("tflite", "latency_p50_ms"),
                    "int8_accuracy_drop_pts": max(
                        rows[t].accuracy_drop_pts or 0.0 for t in TARGETS if t.endswith("int8")
                    ),
                    "pruned_size_ratio": round(pruned_gz / dense_gz, 3),
                    "pruned_sparsity": pruned.pruning["sparsity"] if pruned.pruning else None,
                    "pruned_accuracy_drop_pts": round(
                        100 * (report.torch_accuracy - pruned.torch_accuracy), 2
                    ),
                    "build_seconds": round(report.seconds, 1),
                    "torch_accuracy": report.torch_accuracy,
                    "table": [r.as_dict() for r in report.rows],
                    "model": "1-D CNN 6x256 -> 4 classes, 102k parameters",
                    **machine(),
                }
            )
        )


if __name__ == "__main__":
    main()
