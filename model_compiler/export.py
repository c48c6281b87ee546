"""torch -> ONNX, with a dynamic batch axis and the weights inside the file."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from model_compiler.targets.base import OPSET


def export_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path) -> Path:
    """Export ``model`` for inputs shaped like ``example``; axis 0 (batch) stays dynamic.

    Parameters
    ----------
    model : torch.nn.Module
        In eval mode.
    example : torch.Tensor
        One input, batch of 1.
    path : Path
        Where the ``.onnx`` file goes.

    Returns
    -------
    Path
        ``path``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated but exports small CNNs and MLPs exactly and
        # needs no onnxscript rewrite passes; the new exporter is a one-line switch later.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            opset_version=OPSET,
            external_data=False,
            dynamo=False,
        )
    return path
