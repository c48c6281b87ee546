"""Labelled data for the learning tests: the synthetic sensor every simulated device reads."""

from __future__ import annotations

import numpy as np

from edge_agent.sources.synthetic import make_dataset


def sensor_data(n: int, seed: int, drift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    return make_dataset(n, seed=seed, drift=drift)
