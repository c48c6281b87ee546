"""A synthetic machine sensor: operating regimes, noise, a slow cycle, rare faults, drift.

The same generator makes training data for models (`make_dataset`) and live readings for
simulated devices (`SyntheticSource`), so a model trained on one recognises the other.
Each draws its normal regimes uniformly unless given ``class_weights``: a device that mostly
idles and rarely peaks (non-IID devices). Faults come at ``anomaly_rate`` either way.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Mapping

import numpy as np

from edge_agent.sources.base import Reading, SensorSource

N_FEATURES = 16
FEATURE_NAMES = [f"f{i:02d}" for i in range(N_FEATURES)]
CLASSES = ["idle", "load", "peak", "fault"]
ANOMALY_CLASS = 3
_PHYSICS_SEED = 1234  # the machine's behaviour: the same for every device and every run
#: The regimes a device runs in; the anomaly class is not one (``anomaly_rate`` brings it).
NORMAL_CLASSES = CLASSES[:ANOMALY_CLASS]


def regime_probabilities(weights: Mapping[int | str, float] | None) -> tuple[float, ...] | None:
    """How often each normal class is drawn, from weights keyed by class name or index.

    A class left out is never drawn; None: uniform. Raises ValueError naming the class at fault:
    an unknown one, the anomaly class, a class given twice, a weight negative or not finite, or
    weights that sum to 0.
    """
    if weights is None:
        return None
    known = ", ".join(f"{i} {name}" for i, name in enumerate(NORMAL_CLASSES))
    by_index = [0.0] * len(NORMAL_CLASSES)
    given: set[int] = set()
    for key, weight in weights.items():
        index = _class_index(key)
        if index == ANOMALY_CLASS:
            raise ValueError(
                f"class {key!r} is the anomaly class: anomaly_rate sets how often it comes, not the mix"
            )
        if index is None:
            raise ValueError(f"unknown class {key!r} (the normal classes: {known})")
        if index in given:
            raise ValueError(f"class {key!r} is given twice ({index} {NORMAL_CLASSES[index]})")
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"class {key!r}: weight {weight} must be a finite number >= 0")
        given.add(index)
        by_index[index] = float(weight)
    total = sum(by_index)
    if total <= 0:
        raise ValueError("the weights sum to 0: at least one class needs a weight above 0")
    return tuple(w / total for w in by_index)


def _class_index(key: int | str) -> int | None:
    """A class's index from its index or name (a string of digits too, as JSON carries keys)."""
    if isinstance(key, str):
        key = int(key) if key.isascii() and key.isdigit() else (CLASSES.index(key) if key in CLASSES else -1)
    if isinstance(key, bool) or not isinstance(key, int) or not 0 <= key < len(CLASSES):
        return None
    return key


def _draw_regimes(
    rng: np.random.Generator, p: tuple[float, ...] | None, size: int | None = None
) -> np.ndarray:
    if p is None:  # uniform: the very draws the generator made before weights existed
        return np.asarray(rng.integers(0, ANOMALY_CLASS, size=size))
    return np.asarray(rng.choice(ANOMALY_CLASS, size=size, p=p))


class SensorPhysics:
    """Class centroids and the drift direction, shared by every device."""

    def __init__(self) -> None:
        rng = np.random.default_rng(_PHYSICS_SEED)
        self.centroids = rng.normal(0.0, 1.0, size=(len(CLASSES), N_FEATURES)).astype(np.float32) * 0.5
        self.cycle_weights = rng.normal(0.0, 0.3, size=N_FEATURES).astype(np.float32)
        drift = rng.normal(0.0, 1.0, size=N_FEATURES)
        self.drift_direction = (drift / np.linalg.norm(drift)).astype(np.float32)

    def sample(
        self,
        labels: np.ndarray,
        rng: np.random.Generator,
        noise: float,
        phase: np.ndarray,
        drift: float = 0.0,
    ) -> np.ndarray:
        x = self.centroids[labels]
        x = x + np.outer(np.sin(phase), self.cycle_weights)
        x = x + rng.normal(0.0, noise, size=x.shape)
        return (x + drift * self.drift_direction).astype(np.float32)


def make_dataset(
    n: int,
    seed: int = 0,
    noise: float = 0.6,
    anomaly_fraction: float = 0.1,
    drift: float = 0.0,
    class_weights: Mapping[int | str, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` labelled samples: ``(x float32 (n, 16), y int64 (n,))``; see `regime_probabilities`."""
    rng = np.random.default_rng(seed)
    normal = _draw_regimes(rng, regime_probabilities(class_weights), size=n)
    labels = np.where(rng.random(n) < anomaly_fraction, ANOMALY_CLASS, normal)
    phase = rng.uniform(0, 2 * math.pi, size=n)
    return SensorPhysics().sample(labels, rng, noise, phase, drift), labels.astype(np.int64)


class SyntheticSource(SensorSource):
    """Readings from `SensorPhysics` at ``rate_hz``, with regimes that persist.

    A new regime is drawn now and then (2% of readings), by ``class_weights`` (`regime_probabilities`).
    """

    def __init__(
        self,
        *,
        rate_hz: float | None = 10.0,
        seed: int = 0,
        anomaly_rate: float = 0.01,
        noise: float = 0.6,
        drift_per_hour: float = 0.0,
        limit: int | None = None,
        period_s: float = 60.0,
        class_weights: Mapping[int | str, float] | None = None,
    ) -> None:
        self.rate_hz = rate_hz
        self.anomaly_rate = anomaly_rate
        self.noise = noise
        self.drift_per_hour = drift_per_hour
        self.limit = limit
        self.period_s = period_s
        self._regime_p = regime_probabilities(class_weights)
        #: Extra covariate shift, set by a simulator to inject drift on a schedule.
        self.extra_drift = 0.0
        #: Concept drift, set by a simulator: a reading that looks like class k is truly class
        #: ``relabel[k]`` now. Inputs do not change, so only labels reveal it.
        self.relabel: dict[int, int] = {}
        self._rng = np.random.default_rng(seed)
        self._physics = SensorPhysics()

    async def readings(self, start_cursor: str | None = None) -> AsyncIterator[Reading]:
        count = int(start_cursor) if start_cursor else 0
        regime = int(_draw_regimes(self._rng, self._regime_p))
        started = time.monotonic()
        next_at = started
        while self.limit is None or count < self.limit:
            if self.rate_hz is not None:
                next_at += 1.0 / self.rate_hz
                delay = next_at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            elif count % 256 == 0:
                await asyncio.sleep(0)  # as fast as possible, but let others run
            if self._rng.random() < 0.02:
                regime = int(_draw_regimes(self._rng, self._regime_p))
            label = ANOMALY_CLASS if self._rng.random() < self.anomaly_rate else regime
            now = time.time()
            drift = self.drift_per_hour * (time.monotonic() - started) / 3600.0 + self.extra_drift
            phase = np.array([2 * math.pi * now / self.period_s])
            x = self._physics.sample(np.array([label]), self._rng, self.noise, phase, drift)[0]
            count += 1
            truth = self.relabel.get(label, label)
            yield Reading(ts=now, values=x.tolist(), label=truth, cursor=str(count))
