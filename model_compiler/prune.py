"""Pruning through NNCF: unstructured magnitude pruning, a short fine-tune, masks folded in.

NNCF 3.4 offers ``nncf.prune`` (unstructured magnitude, local or global, or regularisation
based) for torch; filter (structured) pruning is gone from it. Zeros shrink the model where
it is stored compressed (the bundle's ``.tar.gz`` and over-the-air transfers), not in RAM.
"""

from __future__ import annotations

from dataclasses import dataclass

import nncf
import numpy as np
import torch

from model_compiler.inputs import DataSet


@dataclass
class PruneResult:
    model: torch.nn.Module
    sparsity: float
    finetune_steps: int


def prune(
    model: torch.nn.Module,
    train: DataSet,
    *,
    ratio: float,
    steps: int = 100,
    batch: int = 64,
    lr: float = 1e-3,
) -> PruneResult:
    """Prune ``ratio`` of each layer's weights by magnitude, then fine-tune ``steps`` batches."""
    if train.y is None:
        raise ValueError("pruning fine-tunes on labelled data: the training set needs 'y'")
    example = torch.from_numpy(train.x[:1])
    pruned = nncf.prune(
        model, mode=nncf.PruneMode.UNSTRUCTURED_MAGNITUDE_LOCAL, ratio=ratio, examples_inputs=example
    )
    x, y = torch.from_numpy(train.x), torch.from_numpy(train.y)
    optimizer = torch.optim.Adam(pruned.parameters(), lr=lr)
    pruned.train()
    rng = np.random.default_rng(0)
    for _ in range(steps):
        idx = torch.from_numpy(rng.integers(0, len(x), size=batch))
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(pruned(x[idx]), y[idx])
        loss.backward()
        optimizer.step()
    pruned.eval()
    stripped = nncf.strip(pruned, strip_format=nncf.StripFormat.IN_PLACE, example_input=example)
    weights = [p for name, p in stripped.named_parameters() if name.endswith("weight")]
    zeros = sum(int((w == 0).sum()) for w in weights)
    total = sum(w.numel() for w in weights)
    return PruneResult(stripped.eval(), zeros / max(total, 1), steps)
