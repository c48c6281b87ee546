"""Architectures a recipe can name. Each factory takes ``n_features``, ``n_classes`` and its own kwargs.

A model takes inputs already standardised by the bundle's ``Preprocessing`` (mean/scale): the
normalisation lives in the bundle, not in the network, so the agent's runtimes stay the same.
"""

from __future__ import annotations

import torch
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
