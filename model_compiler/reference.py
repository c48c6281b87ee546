"""Builds the drift reference a bundle carries, from the raw inputs a model was trained on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fleet_protocol.reference import DriftReference


def drift_reference(raw: np.ndarray, feature_names: list[str], bins: int = 10) -> DriftReference:
    """Quantile bins (equal mass on the training data), their counts, mean and std per feature.

    Parameters
    ----------
    raw : ndarray
        ``(samples, features)`` inputs before the model's scaling: what devices read.
    feature_names : list of str
        One per column.
    bins : int
        Bins per feature; equal-mass bins keep every bin's share away from zero, which
        keeps the population stability index stable.
    """
    raw = np.asarray(raw, dtype=np.float64)
    if raw.ndim != 2 or raw.shape[1] != len(feature_names):
        raise ValueError(f"need (samples, {len(feature_names)}) inputs, got {raw.shape}")
    edges_all, counts_all = [], []
    for column in raw.T:
        edges = np.unique(np.quantile(column, np.linspace(0.0, 1.0, bins + 1)))
        if len(edges) < 2:  # a constant feature: one bin around its value
            edges = np.array([edges[0] - 0.5, edges[0] + 0.5])
        counts = np.bincount(bin_index(column, edges), minlength=len(edges) - 1)
        edges_all.append(edges.tolist())
        counts_all.append(counts.tolist())
    return DriftReference(
        feature_names=list(feature_names),
        bin_edges=edges_all,
        counts=counts_all,
        mean=raw.mean(axis=0).tolist(),
        std=raw.std(axis=0).tolist(),
        samples=len(raw),
    )


def bin_index(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each value; the outer bins are open, as `DriftReference` says."""
    return np.clip(np.searchsorted(edges, values, side="right") - 1, 0, len(edges) - 2)


def write_reference(reference: DriftReference, path: Path) -> Path:
    path.write_text(json.dumps(reference.model_dump(mode="json"), separators=(",", ":")))
    return path
