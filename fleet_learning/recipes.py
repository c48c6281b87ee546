"""A model's training recipe: which architecture, which hyperparameters, which features and classes.

The registry keeps a recipe as JSON beside the model (``recipe.model_dump_json()`` /
``TrainingRecipe.model_validate_json()``); a retraining job rebuilds the network from it.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from fleet_learning.exceptions import RecipeError

#: The fleet's sensor: 16 raw features and 4 classes, class 3 the anomaly (as the synthetic source).
FLEET_FEATURE_NAMES = [f"f{i:02d}" for i in range(16)]
FLEET_CLASS_NAMES = ["idle", "load", "peak", "fault"]


class Hyperparameters(BaseModel):
    """How to train: Adam with weight decay, mini-batches, a seed that makes a run repeatable."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(30, ge=1, le=10_000)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(0.01, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    seed: int = 0
    #: Share of weights the compiler prunes (NNCF, ``BuildRequest.prune_ratio``); None: no pruning.
    prune_ratio: float | None = Field(None, gt=0, lt=1)


class TrainingRecipe(BaseModel):
    """Architecture entry point + hyperparameters + the model's inputs and outputs.

    Parameters
    ----------
    entry_point : str
        ``"package.module:callable"``; called as ``callable(n_features=..., n_classes=...,
        **architecture)`` and must return a ``torch.nn.Module`` taking standardised features.
    architecture : dict
        Extra keyword arguments of the entry point (``{"hidden": 64}``).
    hyperparameters : Hyperparameters
        Epochs, batch size, learning rate, weight decay, seed, optional prune ratio.
    feature_names, class_names : list of str
        Raw input features in the order the model takes them; the classes it outputs.
    anomaly_classes : list of int
        Indices of ``class_names`` the agent reports as anomalies.
    """

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    entry_point: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    architecture: dict[str, Any] = Field(default_factory=dict)
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    feature_names: list[str] = Field(min_length=1)
    class_names: list[str] = Field(min_length=2)
    anomaly_classes: list[int] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_classes(self) -> TrainingRecipe:
        bad = [c for c in self.anomaly_classes if not 0 <= c < len(self.class_names)]
        if bad:
            raise ValueError(f"anomaly_classes {bad} are not indices of class_names")
        if len(set(self.feature_names)) != len(self.feature_names):
            raise ValueError("feature_names has duplicates")
        return self

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)


def default_recipe() -> TrainingRecipe:
    """The fleet's tabular classifier: MLP 16 -> 64 -> 4 on the sensor's raw features."""
    return TrainingRecipe(
        entry_point="fleet_learning.models:mlp",
        architecture={"hidden": 64},
        hyperparameters=Hyperparameters(epochs=30, batch_size=256, lr=0.01),
        feature_names=FLEET_FEATURE_NAMES,
        class_names=FLEET_CLASS_NAMES,
        anomaly_classes=[3],
    )


def build_model(recipe: TrainingRecipe) -> nn.Module:
    """A freshly initialised network of the recipe (in training mode).

    Raises
    ------
    RecipeError
        If the entry point cannot be imported or does not return a ``torch.nn.Module``.
    """
    module_name, _, attr = recipe.entry_point.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise RecipeError(f"cannot load entry point {recipe.entry_point!r}: {exc}") from None
    try:
        model = factory(n_features=recipe.n_features, n_classes=recipe.n_classes, **recipe.architecture)
    except TypeError as exc:
        raise RecipeError(f"{recipe.entry_point} rejected its arguments: {exc}") from None
    if not isinstance(model, nn.Module):
        raise RecipeError(f"{recipe.entry_point} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def write_compiler_factory(recipe: TrainingRecipe, directory: Path) -> str:
    """A ``path/to/model.py:factory`` spec for ``model_compiler.build`` (which calls ``factory()``).

    The compiler loads a model from a file and calls its factory without arguments; this writes a
    two-line file that builds the recipe's network, so any recipe can be compiled.
    """
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "recipe_model.py"
    path.write_text(
        "from fleet_learning.recipes import TrainingRecipe, build_model\n\n"
        f"_RECIPE = TrainingRecipe.model_validate_json({recipe.model_dump_json()!r})\n\n\n"
        "def factory():\n"
        "    return build_model(_RECIPE)\n"
    )
    return f"{path}:factory"
