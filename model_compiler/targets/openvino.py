"""OpenVINO IR targets: fp32 by ``convert_model``; int8 by NNCF post-training quantization."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nncf
import numpy as np
import openvino as ov

from fleet_protocol import Runtime
from model_compiler.targets.base import Artifact, BuildContext, Target


def _save(model: ov.Model, folder: Path) -> dict[str, Path]:
    xml = folder / "model.xml"
    ov.save_model(model, str(xml), compress_to_fp16=False)
    return {"model.xml": xml, "model.bin": xml.with_suffix(".bin")}


class OpenVinoFp32(Target):
    name, runtime, precision = "openvino-fp32", Runtime.OPENVINO, "fp32"

    def build(self, ctx: BuildContext) -> Artifact:
        files = _save(ov.convert_model(str(ctx.onnx_fp32())), ctx.scratch(self.name))
        return Artifact(self.name, self.runtime, self.precision, files, "model.xml")


class OpenVinoInt8(Target):
    """``nncf.quantize``; with a maximum drop, ``nncf.quantize_with_accuracy_control`` instead."""

    name, runtime, precision = "openvino-int8", Runtime.OPENVINO, "int8"

    def build(self, ctx: BuildContext) -> Artifact:
        model = ov.convert_model(str(ctx.onnx_fp32()))
        source = ctx.calibration or ctx.eval
        calibration = nncf.Dataset([row[None, ...] for row in source.x[:300]])
        if ctx.max_drop_pts is not None and ctx.eval.y is not None:
            validation = nncf.Dataset(list(zip(ctx.eval.x, ctx.eval.y, strict=True)))
            quantized = nncf.quantize_with_accuracy_control(
                model,
                calibration,
                validation,
                validation_fn=_accuracy,
                max_drop=ctx.max_drop_pts / 100.0,
                subset_size=min(300, len(source.x)),
            )
            method = f"nncf.quantize_with_accuracy_control, max drop {ctx.max_drop_pts} points"
        else:
            quantized = nncf.quantize(model, calibration, subset_size=min(300, len(source.x)))
            method = "nncf.quantize (post-training, 300 calibration samples)"
        files = _save(quantized, ctx.scratch(self.name))
        return Artifact(
            self.name, self.runtime, self.precision, files, "model.xml", notes={"quantization": method}
        )


def _accuracy(compiled: ov.CompiledModel, items: Any) -> float:
    hits = total = 0
    for x, y in items:
        output = compiled(x[None, ...])[0]
        hits += int(np.argmax(output) == y)
        total += 1
    return hits / max(total, 1)
