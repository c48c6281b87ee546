"""Target names -> targets. The TFLite ones convert in their own venv."""

from __future__ import annotations

from model_compiler.targets.base import Target
from model_compiler.targets.onnx import OnnxFp32, OnnxInt8
from model_compiler.targets.openvino import OpenVinoFp32, OpenVinoInt8
from model_compiler.targets.tflite import TfliteFp32, TfliteInt8

TARGETS: dict[str, Target] = {
    t.name: t for t in (OnnxFp32(), OnnxInt8(), OpenVinoFp32(), OpenVinoInt8(), TfliteFp32(), TfliteInt8())
}
