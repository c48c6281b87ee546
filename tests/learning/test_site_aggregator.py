from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from fleet_learning.config import FederatedConfig
from fleet_learning.site_aggregator import SiteAggregator
from fleet_learning.strategies import privacy_settings


def test_site_update_is_the_example_weighted_mean() -> None:
    site = SiteAggregator("site-a")
    site.add({"w": np.array([1.0, 0.0], np.float32)}, 30, {"train-loss": 1.0})
    site.add({"w": np.array([0.0, 1.0], np.float32)}, 10, {"train-loss": 3.0})
    site.add({"w": np.array([9.0, 9.0], np.float32)}, 0, {"train-loss": 9.0})  # no examples, no weight

    update = site.result()

    assert update is not None
    np.testing.assert_allclose(update.arrays["w"], [0.75, 0.25])
    assert (update.num_examples, update.devices) == (40, 2)
    assert update.metrics["train-loss"] == pytest.approx(1.5)


def test_site_without_updates_sends_nothing() -> None:
    assert SiteAggregator("empty").result() is None


def test_site_refuses_updates_of_another_shape() -> None:
    site = SiteAggregator("site-a")
    site.add({"w": np.zeros(2, np.float32)}, 1, {})

    with pytest.raises(ValueError, match="do not match"):
        site.add({"v": np.zeros(2, np.float32)}, 1, {})


def test_config_refuses_inconsistent_settings() -> None:
    with pytest.raises(ValidationError, match="fedprox needs mu"):
        FederatedConfig(strategy="fedprox")
    with pytest.raises(ValidationError, match="needs clip_norm"):
        FederatedConfig(noise_multiplier=1.0)
    with pytest.raises(ValidationError, match="strategy"):
        FederatedConfig(strategy="fedsgd")


def test_privacy_settings_record_the_noise_per_round() -> None:
    settings = privacy_settings(2.0, 0.5, [4, 2], [0.25, 0.5])

    assert settings["clipping_norm"] == 2.0
    assert settings["noise_stddev_per_round"] == [0.25, 0.5]
    assert privacy_settings(None, 0.0, []) == {"mechanism": "none"}
