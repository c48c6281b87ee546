"""LiteRT targets, converted in ``.venv-tflite`` by a worker subprocess (see tflite_worker.py)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np

from fleet_protocol import Runtime
from model_compiler.exceptions import TargetError
from model_compiler.targets.base import Artifact, BuildContext, Target

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PYTHON = ROOT / ".venv-tflite" / "bin" / "python"


def convert_tflite(ctx: BuildContext) -> dict[str, dict[str, str]]:
    """Run the worker once for both precisions; cached on the context."""
    cached = getattr(ctx, "_tflite", None)
    if cached is not None:
        return cached
    python = ctx.tflite_python or DEFAULT_PYTHON
    if not Path(python).exists():
        raise TargetError(
            f"TFLite targets need the converter venv {python.parent.parent}: run `make install`"
            " (it builds .venv-tflite from requirements/tflite.txt)"
        )
    out = ctx.scratch("tflite")
    calibration = out / "calibration.npz"
    source = ctx.calibration or ctx.eval
    np.savez(calibration, x=source.x[:300])
    command = [
        str(python),
        "-m",
        "model_compiler.targets.tflite_worker",
        "--model",
        ctx.model_spec,
        "--calibration",
        str(calibration),
        "--out",
        str(out),
    ]
    if ctx.weights is not None:
        command += ["--weights", str(ctx.weights)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-8:])
        raise TargetError(f"TFLite conversion failed (exit {result.returncode}):\n{tail}")
    written = json.loads(result.stdout.strip().splitlines()[-1])
    ctx._tflite = written  # type: ignore[attr-defined]
    return written


class _TfliteTarget(Target):
    runtime = Runtime.LITERT

    def _artifact(self, made: dict[str, str], notes: dict[str, str]) -> Artifact:
        return Artifact(
            self.name,
            self.runtime,
            self.precision,
            {"model.tflite": Path(made["path"])},
            "model.tflite",
            made["input_dtype"],
            made["output_dtype"],
            notes,
        )


class TfliteFp32(_TfliteTarget):
    name, precision = "tflite-fp32", "fp32"

    def build(self, ctx: BuildContext) -> Artifact:
        return self._artifact(convert_tflite(ctx)["fp32"], {})


class TfliteInt8(_TfliteTarget):
    """Full int8 (weights and activations) when it keeps accuracy; else int8 weights only."""

    name, precision = "tflite-int8", "int8"
    #: Largest accuracy drop, in points, accepted from full int8 before falling back.
    DEFAULT_MAX_DROP_PTS = 2.0

    def build(self, ctx: BuildContext) -> Artifact:
        made = convert_tflite(ctx)
        full = self._artifact(made["int8"], {"quantization": "ai-edge-quantizer static_wi8_ai8"})
        if ctx.eval.y is None:
            return full
        from model_compiler.evaluate import accuracy_of

        limit = ctx.max_drop_pts if ctx.max_drop_pts is not None else self.DEFAULT_MAX_DROP_PTS
        drop = 100 * (ctx.torch_accuracy() - accuracy_of(full, ctx.eval))
        if drop <= limit:
            return full
        return self._artifact(
            made["int8_dynamic"],
            {
                "quantization": "ai-edge-quantizer dynamic_wi8_afp32 (int8 weights): full int8 lost"
                f" {drop:.1f} points, over the {limit} allowed"
            },
        )
