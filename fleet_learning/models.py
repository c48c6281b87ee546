"""Architectures a recipe can name: a fixed registry, nothing else is ever imported or called.

Each factory takes ``n_features``, ``n_classes`` and its own keyword arguments, which a pydantic
model checks (types and bounds) before the factory runs. A recipe comes from the controller's API
and travels in Flower messages to every device: its ``entry_point`` is a key of
:data:`ARCHITECTURES`, never a module to import.

A model takes inputs already standardised by the bundle's ``Preprocessing`` (mean/scale): the
normalisation lives in the bundle, not in the network, so the agent's runtimes stay the same.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn


class MLP(nn.Module):
    """n_features -> hidden -> n_classes. Its own Module (not a bare Sequential) so NNCF can wrap it.

    Same layers and parameter names (``fc1``, ``fc2``) as the simulators' first model, so weights
    of the fleet's production model load into it.
    """

    def __init__(self, n_features: int = 16, n_classes: int = 4, hidden: int = 64) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_features, hidden)
        self.fc2 = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def mlp(n_features: int, n_classes: int, hidden: int = 64) -> MLP:
    """The fleet's tabular classifier."""
    return MLP(n_features, n_classes, hidden)


class MLPArguments(BaseModel):
    """``architecture`` of ``fleet_learning.models:mlp``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    hidden: int = Field(64, ge=1, le=4096)


@dataclass(frozen=True)
class Architecture:
    """A network a recipe may name: its factory and the model checking the factory's kwargs."""

    factory: Callable[..., nn.Module]
    arguments: type[BaseModel]


#: Every architecture a recipe may name, keyed by its ``entry_point`` (the default MLP's historic
#: ``module:callable`` string, so recipes stored before the registry keep working).
ARCHITECTURES: dict[str, Architecture] = {
    "fleet_learning.models:mlp": Architecture(mlp, MLPArguments),
}
