"""Non-IID sensors: a synthetic source draws its regimes by class weights, uniformly without them."""

from __future__ import annotations

import hashlib
from collections import Counter

import numpy as np
import pytest

from edge_agent.config import SyntheticSourceConfig
from edge_agent.sources import synthetic
from edge_agent.sources.synthetic import ANOMALY_CLASS, SyntheticSource, make_dataset, regime_probabilities

N = 20_000


async def _labels(source: SyntheticSource) -> list[int]:
    return [r.label async for r in source.readings() if r.label is not None]


async def test_regimes_come_in_the_proportions_of_the_class_weights() -> None:
    weights = {0: 0.7, 1: 0.2, 2: 0.1}
    labels = await _labels(
        SyntheticSource(rate_hz=None, seed=3, limit=N, anomaly_rate=0.05, class_weights=weights)
    )
    counts = Counter(labels)
    normal = N - counts[ANOMALY_CLASS]
    # A regime lasts about 50 readings, so 20,000 readings hold about 400 draws: within 0.08
    # (2.5 standard deviations of the share of the most likely class).
    for cls, weight in weights.items():
        assert counts[cls] / normal == pytest.approx(weight, abs=0.08), cls
    assert counts[ANOMALY_CLASS] / N == pytest.approx(0.05, abs=0.01), "faults keep to anomaly_rate"


async def test_a_class_left_out_never_comes_and_names_mean_their_index() -> None:
    labels = await _labels(
        SyntheticSource(
            rate_hz=None, seed=4, limit=5000, anomaly_rate=0.0, class_weights={"idle": 1, "peak": 3}
        )
    )
    assert set(labels) == {0, 2}
    assert 0.6 < labels.count(2) / len(labels) < 0.9
    for same in ({0: 1, 2: 3}, {"0": 1, "2": 3}):  # by index, and as JSON carries keys
        again = await _labels(
            SyntheticSource(rate_hz=None, seed=4, limit=5000, anomaly_rate=0.0, class_weights=same)
        )
        assert again == labels


def test_training_data_follows_the_weights_too() -> None:
    _, y = make_dataset(6000, seed=9, anomaly_fraction=0.1, class_weights={0: 0.1, 1: 0.3, 2: 0.6})
    normal = y[y != ANOMALY_CLASS]
    shares = np.bincount(normal, minlength=3) / len(normal)
    assert shares == pytest.approx([0.1, 0.3, 0.6], abs=0.03)
    assert np.mean(y == ANOMALY_CLASS) == pytest.approx(0.1, abs=0.015)


def _digest(values: object) -> str:
    return hashlib.sha256(repr(values).encode()).hexdigest()[:16]


async def test_without_weights_the_readings_are_those_of_before(monkeypatch: pytest.MonkeyPatch) -> None:
    # Digests of what the source and make_dataset gave for these seeds before class weights existed
    # (the slow cycle's phase pinned by a fixed clock).
    monkeypatch.setattr(synthetic.time, "time", lambda: 1000.0)
    readings = {}
    for name, weights in (("default", {}), ("None", {"class_weights": None})):
        source = SyntheticSource(rate_hz=None, seed=7, limit=400, anomaly_rate=0.05, **weights)
        readings[name] = [r async for r in source.readings()]
    assert readings["default"] == readings["None"]
    got = readings["default"]
    assert _digest("".join(str(r.label) for r in got)) == "f65347f885f874f1"
    assert _digest([round(v, 5) for r in got for v in r.values]) == "683f217277cd9c86"
    x, y = make_dataset(300, seed=5)
    assert _digest("".join(map(str, y.tolist()))) == "4a9af995d88927c7"
    assert _digest([round(float(v), 5) for v in x.ravel()]) == "c41e9223d946356a"


def test_the_source_config_takes_weights_by_name_or_index_and_refuses_bad_ones() -> None:
    assert SyntheticSourceConfig(class_weights={"idle": 2, 1: 1}).class_weights == {"idle": 2, 1: 1}
    assert SyntheticSourceConfig().class_weights is None, "uniform unless configured"
    assert regime_probabilities({"idle": 2, 1: 1}) == pytest.approx((2 / 3, 1 / 3, 0.0))
    for bad, says in (
        ({"lod": 1}, "unknown class 'lod'"),
        ({7: 1}, "unknown class 7"),
        ({"fault": 0.1, "idle": 1}, "'fault' is the anomaly class"),
        ({0: 1, "idle": 1}, "'idle' is given twice"),
        ({0: -0.5, 1: 1}, "class 0: weight -0.5"),
        ({0: float("nan")}, "class 0: weight nan"),
        ({0: 0, 1: 0}, "sum to 0"),
    ):
        with pytest.raises(ValueError, match=says):
            SyntheticSourceConfig(class_weights=bad)
        with pytest.raises(ValueError, match=says):
            SyntheticSource(class_weights=bad)
