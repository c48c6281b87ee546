"""LiteRT (TFLite) backend through ai-edge-litert, the maintained successor of tflite-runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from edge_agent.exceptions import ModelLoadError
from edge_agent.runtimes.base import Runtime, dims
from fleet_protocol import BundleManifest

_QUANTIZED = (np.int8, np.uint8, np.int16)


class LiteRtRuntime(Runtime):
    name = "litert"

    def __init__(self, model_path: Path, manifest: BundleManifest, *, threads: int = 1) -> None:
        super().__init__(model_path, manifest, threads=threads)
        try:
            self._interpreter = Interpreter(model_path=str(model_path), num_threads=threads)
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"LiteRT cannot load {model_path.name}: {exc}") from None
        detail_in = self._interpreter.get_input_details()[0]
        detail_out = self._interpreter.get_output_details()[0]
        self.check_shape("tflite model", dims(detail_in["shape"].tolist()))
        self._in_index, self._out_index = detail_in["index"], detail_out["index"]
        self._in_dtype = detail_in["dtype"]
        self._in_scale, self._in_zero = detail_in["quantization"]
        self._out_scale, self._out_zero = detail_out["quantization"]
        self._out_quantized = detail_out["dtype"] in _QUANTIZED and self._out_scale > 0

    def infer(self, batch: np.ndarray) -> np.ndarray:
        rows = []
        for row in batch:
            self._interpreter.set_tensor(self._in_index, self._quantize(row[None, :]))
            self._interpreter.invoke()
            out = self._interpreter.get_tensor(self._out_index)
            if self._out_quantized:
                out = (out.astype(np.float32) - self._out_zero) * self._out_scale
            rows.append(out[0].astype(np.float32, copy=False))
        return np.stack(rows)

    def _quantize(self, x: np.ndarray) -> np.ndarray:
        # Fully-integer models take int8 inputs: map floats with the tensor's own scale.
        if self._in_dtype in _QUANTIZED and self._in_scale > 0:
            info = np.iinfo(self._in_dtype)
            q = np.round(x / self._in_scale + self._in_zero)
            return np.clip(q, info.min, info.max).astype(self._in_dtype)
        return x.astype(self._in_dtype, copy=False)
