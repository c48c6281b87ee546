"""ONNX Runtime targets: fp32 as exported; int8 by onnxruntime's static QDQ quantization."""

from __future__ import annotations

import logging

import numpy as np
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from fleet_protocol import Runtime
from model_compiler.targets.base import Artifact, BuildContext, Target

log = logging.getLogger(__name__)


class OnnxFp32(Target):
    name, runtime, precision = "onnx-fp32", Runtime.ONNXRUNTIME, "fp32"

    def build(self, ctx: BuildContext) -> Artifact:
        return Artifact(
            self.name, self.runtime, self.precision, {"model.onnx": ctx.onnx_fp32()}, "model.onnx"
        )


class _Reader(CalibrationDataReader):
    def __init__(self, x: np.ndarray) -> None:
        self._rows = iter([{"input": row[None, ...]} for row in x])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._rows, None)


class OnnxInt8(Target):
    """Static int8 (QDQ, per-channel weights) with calibration data; dynamic int8 without."""

    name, runtime, precision = "onnx-int8", Runtime.ONNXRUNTIME, "int8"

    def build(self, ctx: BuildContext) -> Artifact:
        out = ctx.scratch(self.name)
        prepared = out / "prepared.onnx"
        quant_pre_process(str(ctx.onnx_fp32()), str(prepared), skip_symbolic_shape=True)
        target = out / "model.onnx"
        if ctx.calibration is not None:
            quantize_static(
                str(prepared),
                str(target),
                _Reader(ctx.calibration.x[:300]),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
            )
            method = "static QDQ, per-channel, 300 calibration samples"
        else:
            quantize_dynamic(str(prepared), str(target), weight_type=QuantType.QInt8)
            method = "dynamic (no calibration data)"
        prepared.unlink()
        return Artifact(
            self.name,
            self.runtime,
            self.precision,
            {"model.onnx": target},
            "model.onnx",
            notes={"quantization": f"onnxruntime {method}"},
        )
