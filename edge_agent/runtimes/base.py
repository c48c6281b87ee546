"""The one small interface every inference engine implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

import numpy as np

from edge_agent.exceptions import ModelSpecMismatch
from fleet_protocol import BundleManifest


class Runtime(ABC):
    """Loads one model file and runs float32 batches of shape ``(batch, features)``."""

    name: ClassVar[str]

    def __init__(self, model_path: Path, manifest: BundleManifest, *, threads: int = 1) -> None:
        self.model_path = model_path
        self.manifest = manifest
        self.threads = threads
        self.n_features = len(manifest.preprocessing.feature_names)
        declared = manifest.inputs[0].shape
        if declared[-1] is not None and declared[-1] != self.n_features:
            raise ModelSpecMismatch(
                f"manifest input {manifest.inputs[0].name!r} has {declared[-1]} features but"
                f" preprocessing names {self.n_features}"
            )

    @abstractmethod
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Run the model on ``batch`` (float32, ``(n, features)``); return ``(n, outputs)``."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release native resources."""

    def check_shape(self, what: str, actual: list[int | None]) -> None:
        """Refuse a model whose real input shape contradicts the manifest's."""
        declared = self.manifest.inputs[0].shape
        if len(actual) != len(declared) or any(
            a is not None and d is not None and a != d for a, d in zip(actual, declared, strict=False)
        ):
            raise ModelSpecMismatch(
                f"{what} input shape {actual} does not match manifest shape {declared}"
                f" for {self.model_path.name}"
            )
        if actual[-1] is not None and actual[-1] != self.n_features:
            raise ModelSpecMismatch(
                f"{what} expects {actual[-1]} features, manifest preprocessing gives {self.n_features}"
            )


def dims(shape: object) -> list[int | None]:
    """Normalise an engine's shape (symbolic names, -1, '?') to ints and ``None``."""
    out: list[int | None] = []
    for d in shape:  # type: ignore[attr-defined]
        out.append(d if isinstance(d, int) and d >= 0 else None)
    return out


def run_in_chunks(batch: np.ndarray, size: int, run_one: object) -> np.ndarray:
    """Feed a batch to a model with a fixed batch size ``size``, chunk by chunk."""
    outputs = [run_one(batch[i : i + size]) for i in range(0, len(batch), size)]  # type: ignore[operator]
    return np.concatenate(outputs, axis=0)
