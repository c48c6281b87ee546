"""Train and evaluate a recipe's network on raw features, the same way in the cloud and on a device.

Normalisation is not inside the network: the agent feeds raw features through the bundle's
``Preprocessing`` (``(x - mean) / scale``) before the model. So training fits (or, in federated
rounds, is given) a :class:`Standardisation`, trains on standardised inputs, and returns the
mean/scale with the weights; ``model_compiler.build`` writes them into the bundle.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fleet_learning.exceptions import DataError
from fleet_learning.recipes import Hyperparameters


@dataclass(frozen=True)
class Standardisation:
    """``(x - mean) / scale`` per feature: what the bundle's ``Preprocessing`` applies on the device."""

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def of(cls, x: np.ndarray) -> Standardisation:
        """Fitted on ``x``; a constant feature gets scale 1 rather than a division by ~0."""
        std = x.std(axis=0)
        return cls(x.mean(axis=0).astype(np.float32), np.where(std < 1e-6, 1.0, std).astype(np.float32))

    @classmethod
    def identity(cls, n_features: int) -> Standardisation:
        return cls(np.zeros(n_features, np.float32), np.ones(n_features, np.float32))

    def apply(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.scale).astype(np.float32)


@dataclass
class TrainStats:
    """What one ``fit`` did; ``standardisation`` goes into the bundle with the weights."""

    loss: float  # mean training loss of the last epoch (with the proximal term, if any)
    n: int
    epochs: int
    steps: int
    seconds: float
    standardisation: Standardisation

    @property
    def mean(self) -> list[float]:
        return self.standardisation.mean.tolist()

    @property
    def scale(self) -> list[float]:
        return self.standardisation.scale.tolist()


@dataclass
class EvalStats:
    accuracy: float
    loss: float
    n: int


def check_data(x: np.ndarray, y: np.ndarray, n_features: int | None = None) -> None:
    """Raise DataError unless ``x`` is (n, features) finite and ``y`` has n non-negative ints."""
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
        raise DataError(f"expected x (n, features) and y (n,), got {x.shape} and {y.shape}")
    if n_features is not None and x.shape[1] != n_features:
        raise DataError(f"the model takes {n_features} features, the data has {x.shape[1]}")
    if len(x) and not np.isfinite(x).all():
        raise DataError("x has NaN or infinite values")
    if len(y) and y.min() < 0:
        raise DataError("labels must be class indices >= 0")


def fit(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    hp: Hyperparameters,
    *,
    standardisation: Standardisation | None = None,
    epochs: int | None = None,
    proximal_to: dict[str, torch.Tensor] | None = None,
    mu: float = 0.0,
) -> TrainStats:
    """Train ``model`` in place on raw features ``x`` and class indices ``y``.

    Parameters
    ----------
    model : nn.Module
        Takes standardised features; left in eval mode.
    x, y : np.ndarray
        Raw features ``(n, n_features)`` and labels ``(n,)``.
    hp : Hyperparameters
        Batch size, learning rate, weight decay, seed; ``epochs`` unless overridden.
    standardisation : Standardisation, optional
        Fixed mean/scale (a federated round uses the global model's so every client trains in the
        same input space); fitted on ``x`` if None.
    epochs : int, optional
        Overrides ``hp.epochs`` (a federated round's local epochs).
    proximal_to : dict, optional
        FedProx: the round's global weights; adds ``mu / 2 * ||w - w_global||^2`` to the loss.
    mu : float
        FedProx proximal coefficient; 0 is plain local SGD (FedAvg).

    Returns
    -------
    TrainStats
        Last-epoch loss, counts, time, and the standardisation used.

    Raises
    ------
    DataError
        If the data is empty, malformed or not finite.
    """
    check_data(x, y)
    if len(x) == 0:
        raise DataError("no training samples")
    started = time.perf_counter()
    std = standardisation or Standardisation.of(x)
    xs = torch.from_numpy(std.apply(x))
    ys = torch.from_numpy(y.astype(np.int64))
    n_epochs = epochs if epochs is not None else hp.epochs
    # Seeded here (not globally) so a fit is repeatable whatever ran before it in the process.
    torch.manual_seed(hp.seed)
    order = torch.Generator().manual_seed(hp.seed)
    anchors = None
    if proximal_to is not None and mu > 0:
        anchors = [(p, proximal_to[name].detach().to(p.dtype)) for name, p in model.named_parameters()]
    optimizer = torch.optim.Adam(model.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
    model.train()
    steps, epoch_loss = 0, math.nan
    for _ in range(n_epochs):
        perm = torch.randperm(len(xs), generator=order)
        total, count = 0.0, 0
        for i in range(0, len(xs), hp.batch_size):
            idx = perm[i : i + hp.batch_size]
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(xs[idx]), ys[idx])
            if anchors is not None:
                loss = loss + mu / 2 * sum(((p - a) ** 2).sum() for p, a in anchors)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
            steps += 1
        epoch_loss = total / count
    model.eval()
    return TrainStats(epoch_loss, len(xs), n_epochs, steps, time.perf_counter() - started, std)


def evaluate(
    model: nn.Module, x: np.ndarray, y: np.ndarray, *, standardisation: Standardisation | None = None
) -> EvalStats:
    """Accuracy and mean cross-entropy of ``model`` on ``x``, ``y``.

    ``x`` is raw when ``standardisation`` is given (the usual case), else already standardised.
    """
    check_data(x, y)
    if len(x) == 0:
        return EvalStats(accuracy=math.nan, loss=math.nan, n=0)
    xs = standardisation.apply(x) if standardisation is not None else x.astype(np.float32)
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(xs))
        ys = torch.from_numpy(y.astype(np.int64))
        loss = float(nn.functional.cross_entropy(logits, ys))
        accuracy = float((logits.argmax(dim=1) == ys).float().mean())
    return EvalStats(accuracy=accuracy, loss=loss, n=len(x))
