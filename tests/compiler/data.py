"""Data sets made in the test: the synthetic sensor (MLP) and synthetic vibration windows (CNN)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from edge_agent.sources.synthetic import FEATURE_NAMES, make_dataset


def sensor_npz(folder: Path) -> dict[str, Path]:
    """train / calibration / eval .npz of the 16-feature sensor, standardised, with preprocessing."""
    x, y = make_dataset(6000, seed=0)
    mean, scale = x.mean(0), x.std(0) + 1e-6
    out = {}
    for name, (xs, ys) in {
        "train": (x, y),
        "calibration": make_dataset(400, seed=1),
        "eval": make_dataset(1000, seed=2),
    }.items():
        path = folder / f"{name}.npz"
        np.savez(
            path,
            x=((xs - mean) / scale).astype(np.float32),
            y=ys,
            feature_names=np.array(FEATURE_NAMES),
            mean=mean,
            scale=scale,
        )
        out[name] = path
    return out


def vibration(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows of 6 x 256: each class a different mix of frequencies, plus noise and random phase."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, size=n)
    t = np.arange(256) / 256.0
    freqs = np.array([[3, 7], [5, 11], [9, 2], [13, 17]])
    phase = rng.uniform(0, 2 * np.pi, size=(n, 6, 1))
    base = np.sin(2 * np.pi * freqs[y][:, 0, None, None] * t + phase) + 0.5 * np.sin(
        2 * np.pi * freqs[y][:, 1, None, None] * t + 2 * phase
    )
    x = base + rng.normal(0, 0.8, size=(n, 6, 256))
    return x.astype(np.float32), y.astype(np.int64)


def vibration_npz(folder: Path) -> dict[str, Path]:
    out = {}
    for name, (n, seed) in {"train": (3000, 0), "calibration": (300, 1), "eval": (500, 2)}.items():
        x, y = vibration(n, seed)
        path = folder / f"{name}.npz"
        np.savez(path, x=x, y=y)
        out[name] = path
    return out


def train(
    model: torch.nn.Module, data: Path, *, epochs: int, lr: float = 3e-3, batch: int = 64
) -> torch.nn.Module:
    with np.load(data) as d:
        x, y = torch.from_numpy(d["x"]), torch.from_numpy(d["y"])
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for i in range(0, len(x), batch):
            idx = order[i : i + batch]
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            optimizer.step()
    return model.eval()
