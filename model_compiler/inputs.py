"""What a build starts from: a torch model factory, its weights, and data sets as ``.npz``."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model_compiler.exceptions import InputError


@dataclass
class DataSet:
    """``x``: model inputs, already preprocessed; ``y``: integer labels (classification)."""

    x: np.ndarray
    y: np.ndarray | None
    sha256: str
    feature_names: list[str] | None = None
    mean: list[float] | None = None
    scale: list[float] | None = None


def load_factory(spec: str) -> Any:
    """``path/to/model.py:factory`` -> the factory callable."""
    path, _, name = spec.rpartition(":")
    if not path or not name:
        raise InputError(f"--model must be path/to/model.py:factory, got {spec!r}")
    file = Path(path)
    if not file.is_file():
        raise InputError(f"model file {file} does not exist")
    module_spec = importlib.util.spec_from_file_location(f"edgefleet_user_model_{file.stem}", file)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    # Registered before it runs: dataclasses and pickling look a module up by name.
    sys.modules[module_spec.name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_spec.name, None)
        raise InputError(f"cannot import {file}: {exc}") from None
    factory = getattr(module, name, None)
    if not callable(factory):
        raise InputError(f"{file} has no callable {name!r}")
    return factory


def load_model(spec: str, weights: Path | None) -> torch.nn.Module:
    model = load_factory(spec)()
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"{spec} returned {type(model).__name__}, not a torch.nn.Module")
    if weights is not None:
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except (OSError, RuntimeError, ValueError) as exc:
            raise InputError(f"cannot load weights {weights} into {spec}: {exc}") from None
    return model.eval()


def load_dataset(path: Path) -> DataSet:
    try:
        raw = path.read_bytes()
        with np.load(path, allow_pickle=False) as data:
            if "x" not in data:
                raise InputError(f"{path} has no array 'x' (the model inputs)")
            x = data["x"].astype(np.float32)
            y = data["y"].astype(np.int64) if "y" in data else None
            names = [str(n) for n in data["feature_names"]] if "feature_names" in data else None
            mean = data["mean"].astype(float).tolist() if "mean" in data else None
            scale = data["scale"].astype(float).tolist() if "scale" in data else None
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read data set {path}: {exc}") from None
    if y is not None and len(y) != len(x):
        raise InputError(f"{path}: {len(x)} inputs but {len(y)} labels")
    return DataSet(x, y, hashlib.sha256(raw).hexdigest(), names, mean, scale)
