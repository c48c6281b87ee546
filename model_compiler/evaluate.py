"""Measures a built artifact in its own runtime: accuracy, agreement with torch, latency, memory.

The runners here call the engines directly (the compiler never imports the device daemon);
each runs one sample at a time, as a device does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fleet_protocol import Runtime
from model_compiler.inputs import DataSet
from model_compiler.targets.base import Artifact

Runner = Callable[[np.ndarray], np.ndarray]


@dataclass
class Row:
    """One line of the build table; it also goes into the bundle's manifest ``metrics``."""

    target: str
    runtime: str
    precision: str
    size_bytes: int
    accuracy: float | None
    accuracy_drop_pts: float | None
    max_abs_diff_vs_torch: float
    latency_p50_ms: float
    latency_p95_ms: float
    memory_mb: float

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def open_runner(artifact: Artifact) -> Runner:
    path = artifact.files[artifact.entrypoint]
    if artifact.runtime is Runtime.ONNXRUNTIME:
        return _onnx(path)
    if artifact.runtime is Runtime.OPENVINO:
        return _openvino(path)
    return _litert(path)


def _onnx(path: Path) -> Runner:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def _openvino(path: Path) -> Runner:
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(path))
    shape = [1, *[d.get_length() for d in list(model.inputs[0].get_partial_shape())[1:]]]
    # Static shape and a pre-bound input, as the agent runs it: per-call overhead dominates otherwise.
    model.reshape({model.inputs[0]: ov.PartialShape(shape)})
    compiled = core.compile_model(
        model,
        "CPU",
        {"INFERENCE_NUM_THREADS": 1, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"},
    )
    request = compiled.create_infer_request()
    bound = np.zeros(shape, dtype=np.float32)
    request.set_input_tensor(ov.Tensor(bound, shared_memory=True))
    output = request.get_output_tensor(0)

    def run(x: np.ndarray) -> np.ndarray:
        bound[...] = x
        request.infer()
        return output.data.copy()

    return run


def _litert(path: Path) -> Runner:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    tin, tout = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    in_scale, in_zero = tin["quantization"]
    out_scale, out_zero = tout["quantization"]

    def run(x: np.ndarray) -> np.ndarray:
        if tin["dtype"] in (np.int8, np.uint8, np.int16) and in_scale > 0:
            info = np.iinfo(tin["dtype"])
            x = np.clip(np.round(x / in_scale + in_zero), info.min, info.max).astype(tin["dtype"])
        interpreter.set_tensor(tin["index"], x)
        interpreter.invoke()
        out = interpreter.get_tensor(tout["index"])
        if tout["dtype"] in (np.int8, np.uint8, np.int16) and out_scale > 0:
            out = (out.astype(np.float32) - out_zero) * out_scale
        return out

    return run


def accuracy_of(artifact: Artifact, data: DataSet) -> float:
    """Top-1 accuracy of an artifact on labelled data, one sample at a time."""
    run = open_runner(artifact)
    predicted = np.array([int(np.argmax(run(row[None, ...]))) for row in data.x])
    return float((predicted == data.y).mean())


def evaluate(
    artifact: Artifact, data: DataSet, torch_outputs: np.ndarray, torch_accuracy: float | None
) -> Row:
    """Run every eval sample through the artifact, one at a time."""
    rss_before = _rss_mb()
    run = open_runner(artifact)
    for row in data.x[:20]:  # warm-up: first calls allocate
        run(row[None, ...])
    outputs, latencies = [], []
    for row in data.x:
        started = time.perf_counter()
        outputs.append(run(row[None, ...])[0])
        latencies.append(time.perf_counter() - started)
    memory = max(0.0, _rss_mb() - rss_before)
    out = np.asarray(outputs, dtype=np.float32)
    accuracy = drop = None
    if data.y is not None:
        accuracy = float((out.argmax(axis=1) == data.y).mean())
        drop = round(100 * ((torch_accuracy or 0.0) - accuracy), 2)
    ms = np.asarray(latencies) * 1000
    return Row(
        target=artifact.target,
        runtime=artifact.runtime.value,
        precision=artifact.precision,
        size_bytes=artifact.size_bytes,
        accuracy=round(accuracy, 4) if accuracy is not None else None,
        accuracy_drop_pts=drop,
        max_abs_diff_vs_torch=float(np.abs(out - torch_outputs).max()),
        latency_p50_ms=round(float(np.percentile(ms, 50)), 4),
        latency_p95_ms=round(float(np.percentile(ms, 95)), 4),
        memory_mb=round(memory, 1),
    )


def _rss_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)
