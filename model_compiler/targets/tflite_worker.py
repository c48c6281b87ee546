"""Runs inside ``.venv-tflite`` (litert-torch + ai-edge-quantizer, which cannot share the main venv).

Called by `model_compiler.targets.tflite` as a subprocess; imports only torch, numpy and the
LiteRT tool chain. Prints one JSON line describing what it wrote.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(
        description="torch -> .tflite (fp32 and int8); internal to model-compiler"
    )
    parser.add_argument("--model", required=True)
    parser.add_argument("--weights")
    parser.add_argument("--calibration", required=True, help=".npz with x (preprocessed inputs)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--precisions", default="fp32,int8")
    args = parser.parse_args()

    import ai_edge_quantizer
    import litert_torch
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import recipe

    from model_compiler.inputs import load_model

    model = load_model(args.model, Path(args.weights) if args.weights else None)
    x = np.load(args.calibration)["x"].astype(np.float32)
    args.out.mkdir(parents=True, exist_ok=True)
    fp32 = args.out / "model_fp32.tflite"
    litert_torch.convert(model, (torch.from_numpy(x[:1]),)).export(str(fp32))
    written = {"fp32": _describe(Interpreter, fp32)}
    if "int8" in args.precisions.split(","):
        signatures = Interpreter(model_path=str(fp32)).get_signature_list()
        signature, spec = next(iter(signatures.items()))
        input_name = spec["inputs"][0]
        quantizer = ai_edge_quantizer.Quantizer(str(fp32))
        # Full int8: weights and activations; the agent quantizes inputs with the tensor's scale.
        quantizer.load_quantization_recipe(recipe.static_wi8_ai8())
        calibration = {signature: [{input_name: row[None, ...]} for row in x[:200]]}
        quantized = quantizer.quantize(quantizer.calibrate(calibration))
        int8 = args.out / "model_int8.tflite"
        quantized.export_model(str(int8), overwrite=True)
        written["int8"] = _describe(Interpreter, int8)
        # The fallback when full-int8 activations cost too much accuracy: int8 weights only.
        dynamic = ai_edge_quantizer.Quantizer(str(fp32))
        dynamic.load_quantization_recipe(recipe.dynamic_wi8_afp32())
        int8_dynamic = args.out / "model_int8_dynamic.tflite"
        dynamic.quantize().export_model(str(int8_dynamic), overwrite=True)
        written["int8_dynamic"] = _describe(Interpreter, int8_dynamic)
    print(json.dumps(written), flush=True)


def _describe(interpreter_cls: type, path: Path) -> dict[str, object]:
    interpreter = interpreter_cls(model_path=str(path))
    tensor_in, tensor_out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    return {
        "path": str(path),
        "input_dtype": np.dtype(tensor_in["dtype"]).name,
        "output_dtype": np.dtype(tensor_out["dtype"]).name,
    }


if __name__ == "__main__":
    sys.exit(main())
