"""What every target shares: the build context, the artifact it returns, the ABC."""

from __future__ import annotations

import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch

from fleet_protocol import Runtime
from model_compiler.inputs import DataSet

OPSET = 17


@dataclass
class BuildContext:
    """Everything a target may need; the fp32 ONNX export is made once and shared."""

    model: torch.nn.Module
    calibration: DataSet | None
    eval: DataSet
    workdir: Path
    model_spec: str
    weights: Path | None
    max_drop_pts: float | None = None
    tflite_python: Path | None = None
    _onnx: Path | None = field(default=None, repr=False)

    @property
    def example(self) -> torch.Tensor:
        return torch.from_numpy(self.eval.x[:1])

    def onnx_fp32(self) -> Path:
        if self._onnx is None:
            from model_compiler.export import export_onnx

            self._onnx = export_onnx(self.model, self.example, self.workdir / "export" / "model.onnx")
        return self._onnx

    def torch_accuracy(self) -> float:
        with torch.no_grad():
            logits = self.model(torch.from_numpy(self.eval.x)).numpy()
        return float((logits.argmax(1) == self.eval.y).mean())

    def scratch(self, name: str) -> Path:
        path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.workdir))
        return path


@dataclass
class Artifact:
    """A built model, before it is evaluated and bundled."""

    target: str
    runtime: Runtime
    precision: Literal["fp32", "int8"]
    files: dict[str, Path]
    entrypoint: str
    input_dtype: str = "float32"
    output_dtype: str = "float32"
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files.values())


class Target(ABC):
    name: ClassVar[str]
    runtime: ClassVar[Runtime]
    precision: ClassVar[Literal["fp32", "int8"]]

    @abstractmethod
    def build(self, ctx: BuildContext) -> Artifact:
        """Produce the model file(s) for this target in a folder of ``ctx.workdir``."""
