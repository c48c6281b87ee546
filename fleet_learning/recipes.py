"""A model's training recipe: which architecture, which hyperparameters, which features and classes.

The registry keeps a recipe as JSON beside the model (``recipe.model_dump_json()`` /
``TrainingRecipe.model_validate_json()``); a retraining job rebuilds the network from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from torch import nn

from fleet_learning.exceptions import RecipeError
from fleet_learning.models import ARCHITECTURES

#: The fleet's sensor: 16 raw features and 4 classes, class 3 the anomaly (as the synthetic source).
FLEET_FEATURE_NAMES = [f"f{i:02d}" for i in range(16)]
FLEET_CLASS_NAMES = ["idle", "load", "peak", "fault"]


class Hyperparameters(BaseModel):
    """How to train: Adam with weight decay, mini-batches, a seed that makes a run repeatable."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(30, ge=1, le=10_000)
    batch_size: int = Field(256, ge=1, le=65_536)
    lr: float = Field(0.01, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    seed: int = 0
    #: Share of weights the compiler prunes (NNCF, ``BuildRequest.prune_ratio``); None: no pruning.
    prune_ratio: float | None = Field(None, gt=0, lt=1)


class TrainingRecipe(BaseModel):
    """Architecture + hyperparameters + the model's inputs and outputs.

    Parameters
    ----------
    entry_point : str
        A key of :data:`fleet_learning.models.ARCHITECTURES` (``"fleet_learning.models:mlp"``);
        any other name is refused. Nothing is imported from it: recipes come from the API and
        travel to devices, so only the fixed registry's factories are ever called.
    architecture : dict
        Keyword arguments of that architecture (``{"hidden": 64}``), checked against its bounds.
    hyperparameters : Hyperparameters
        Epochs, batch size, learning rate, weight decay, seed, optional prune ratio.
    feature_names, class_names : list of str
        Raw input features in the order the model takes them; the classes it outputs.
    anomaly_classes : list of int
        Indices of ``class_names`` the agent reports as anomalies.
    """

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    entry_point: str
    architecture: dict[str, Any] = Field(default_factory=dict)
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    feature_names: list[str] = Field(min_length=1, max_length=4096)
    class_names: list[str] = Field(min_length=2, max_length=1024)
    anomaly_classes: list[int] = Field(default_factory=list)

    @field_validator("entry_point")
    @classmethod
    def _known_architecture(cls, value: str) -> str:
        return _architecture(value)

    @model_validator(mode="after")
    def _check_classes(self) -> TrainingRecipe:
        _arguments(self.entry_point, self.architecture)
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


def _architecture(entry_point: str) -> str:
    if entry_point not in ARCHITECTURES:
        allowed = ", ".join(sorted(ARCHITECTURES))
        raise ValueError(f"entry_point {entry_point!r} is not an allowed architecture (allowed: {allowed})")
    return entry_point


def _arguments(entry_point: str, architecture: dict[str, Any]) -> dict[str, Any]:
    """The architecture's kwargs, checked against its bounds (ValueError saying which is wrong)."""
    try:
        checked = ARCHITECTURES[entry_point].arguments.model_validate(architecture)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'architecture'}: {e['msg']}" for e in exc.errors()
        )
        raise ValueError(f"architecture of {entry_point}: {problems}") from None
    return checked.model_dump(exclude_unset=True)


def build_model(recipe: TrainingRecipe) -> nn.Module:
    """A freshly initialised network of the recipe (in training mode).

    Only a factory of :data:`fleet_learning.models.ARCHITECTURES` is called, with checked kwargs;
    checked again here because ``model_copy(update=...)`` skips validation.

    Raises
    ------
    RecipeError
        If the entry point is not an allowed architecture or its arguments are out of bounds.
    """
    try:
        kwargs = _arguments(_architecture(recipe.entry_point), recipe.architecture)
    except ValueError as exc:
        raise RecipeError(str(exc)) from None
    factory = ARCHITECTURES[recipe.entry_point].factory
    model = factory(n_features=recipe.n_features, n_classes=recipe.n_classes, **kwargs)
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
