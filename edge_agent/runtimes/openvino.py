"""OpenVINO backend: one compiled model, one reused infer request, a pre-bound input tensor.

On small models the per-call overhead dominates: ``compiled(x)`` costs about ten times a
reused request whose input tensor shares memory with a numpy array we fill in place.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openvino as ov

from edge_agent.exceptions import ModelLoadError
from edge_agent.runtimes.base import Runtime, dims
from fleet_protocol import BundleManifest


class OpenVinoRuntime(Runtime):
    name = "openvino"

    def __init__(self, model_path: Path, manifest: BundleManifest, *, threads: int = 1) -> None:
        super().__init__(model_path, manifest, threads=threads)
        core = ov.Core()
        try:
            model = core.read_model(str(model_path))
        except Exception as exc:  # OpenVINO raises RuntimeError with its own text
            raise ModelLoadError(f"OpenVINO cannot read {model_path.name}: {exc}") from None
        partial = model.inputs[0].get_partial_shape()
        shape = [None if d.is_dynamic else d.get_length() for d in partial]
        self.check_shape("OpenVINO model", dims(shape))
        # A static 1 x features shape lets the plugin pick its fastest kernels.
        model.reshape({model.inputs[0]: ov.PartialShape([1, self.n_features])})
        compiled = core.compile_model(
            model,
            "CPU",
            # f32: on CPUs with bf16 units the plugin would otherwise lower precision on its own,
            # and the outputs would drift from what the bundle's metrics were measured on.
            {
                "INFERENCE_NUM_THREADS": threads,
                "PERFORMANCE_HINT": "LATENCY",
                "INFERENCE_PRECISION_HINT": "f32",
            },
        )
        self._request = compiled.create_infer_request()
        self._input = np.zeros((1, self.n_features), dtype=np.float32)
        self._request.set_input_tensor(ov.Tensor(self._input, shared_memory=True))
        self._output = self._request.get_output_tensor(0)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        out = None
        for i, row in enumerate(batch):
            self._input[0] = row
            self._request.infer()
            result = self._output.data
            if out is None:
                out = np.empty((len(batch), result.shape[-1]), dtype=np.float32)
            out[i] = result[0]
        assert out is not None, "infer() needs a non-empty batch"
        return out
