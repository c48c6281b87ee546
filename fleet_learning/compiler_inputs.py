"""The files ``model_compiler.build`` starts from, written from a trained network and its data.

The compiler takes a ``file.py:factory``, a ``.pt`` state dict, and ``.npz`` data sets whose ``x`` is
already preprocessed, with ``feature_names``/``mean``/``scale`` beside it (they become the bundle's
``Preprocessing``). A job trains with :mod:`fleet_learning.trainer`, then hands these over.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fleet_learning.recipes import TrainingRecipe, write_compiler_factory
from fleet_learning.trainer import Standardisation


@dataclass
class CompilerInputs:
    """Paths for ``BuildRequest(model=..., weights=..., calibration=..., eval_data=..., train_data=...)``."""

    model: str
    weights: Path
    calibration: Path
    eval_data: Path
    train_data: Path
    labels: list[str]
    anomaly_classes: list[int]
    prune_ratio: float | None


def write_compiler_inputs(
    recipe: TrainingRecipe,
    model: nn.Module,
    standardisation: Standardisation,
    train: tuple[np.ndarray, np.ndarray],
    held_out: tuple[np.ndarray, np.ndarray],
    directory: Path,
    *,
    calibration_samples: int = 1000,
) -> CompilerInputs:
    """Write weights, factory and data sets (raw features standardised here) under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / "weights.pt"
    torch.save(model.state_dict(), weights)
    meta = {
        "feature_names": np.array(recipe.feature_names),
        "mean": standardisation.mean,
        "scale": standardisation.scale,
    }
    x_train = standardisation.apply(train[0])
    paths = {name: directory / f"{name}.npz" for name in ("train", "calibration", "eval")}
    np.savez(paths["train"], x=x_train, y=train[1].astype(np.int64), **meta)
    np.savez(paths["calibration"], x=x_train[:calibration_samples], **meta)
    np.savez(paths["eval"], x=standardisation.apply(held_out[0]), y=held_out[1].astype(np.int64), **meta)
    return CompilerInputs(
        model=write_compiler_factory(recipe, directory),
        weights=weights,
        calibration=paths["calibration"],
        eval_data=paths["eval"],
        train_data=paths["train"],
        labels=list(recipe.class_names),
        anomaly_classes=list(recipe.anomaly_classes),
        prune_ratio=recipe.hyperparameters.prune_ratio,
    )
