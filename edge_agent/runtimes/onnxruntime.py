"""ONNX Runtime backend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from edge_agent.exceptions import ModelLoadError
from edge_agent.runtimes.base import Runtime, dims, run_in_chunks
from fleet_protocol import BundleManifest


class OnnxRuntime(Runtime):
    name = "onnxruntime"

    def __init__(self, model_path: Path, manifest: BundleManifest, *, threads: int = 1) -> None:
        super().__init__(model_path, manifest, threads=threads)
        options = ort.SessionOptions()
        # One device, one model: extra threads only fight the agent's own loop.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelLoadError(f"onnxruntime cannot load {model_path.name}: {exc}") from None
        model_input = self._session.get_inputs()[0]
        shape = dims(model_input.shape)
        self.check_shape("onnx model", shape)
        self._input_name = model_input.name
        self._output_name = self._session.get_outputs()[0].name
        self._fixed_batch = shape[0]

    def infer(self, batch: np.ndarray) -> np.ndarray:
        if self._fixed_batch is None or self._fixed_batch == len(batch):
            return self._run(batch)
        return run_in_chunks(batch, self._fixed_batch, self._run)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self._session.run([self._output_name], {self._input_name: batch})[0]
