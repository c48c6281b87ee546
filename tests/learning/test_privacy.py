"""The privacy a federated job spent: the (epsilon, delta) bound recorded on the job."""

from __future__ import annotations

import math

import pytest

from fleet_learning.privacy import gaussian_epsilon, round_noise_multiplier
from fleet_learning.strategies import privacy_settings


def test_one_gaussian_mechanism_matches_the_renyi_bound_worked_by_hand() -> None:
    # sigma 1, delta 1e-5: min over a of a/2 + ln(1e5)/(a - 1), at a = 1 + sqrt(2 ln 1e5): 5.298.
    by_hand = 1 / 2 + math.sqrt(2 * math.log(1e5)) / 2 + math.sqrt(math.log(1e5) / 2)
    assert by_hand == pytest.approx(5.298, abs=1e-3)
    assert gaussian_epsilon([1.0], 1e-5) == pytest.approx(by_hand, abs=0.01)


def test_epsilon_grows_with_rounds_and_shrinks_with_noise() -> None:
    one, ten = gaussian_epsilon([2.0], 1e-5), gaussian_epsilon([2.0] * 10, 1e-5)
    assert one < ten < 10 * one, "composition costs less than ten separate rounds"
    assert gaussian_epsilon([4.0] * 10, 1e-5) < ten
    assert gaussian_epsilon([0.0], 1e-5) == math.inf
    assert gaussian_epsilon([], 1e-5) == 0.0


def test_a_client_with_most_examples_weakens_the_round() -> None:
    # Uniform weights: the round's noise multiplier is the configured one.
    assert round_noise_multiplier(1.0, 4, 0.25) == pytest.approx(1.0)
    # One client holds half the examples: it moves the mean twice as far, for the same noise.
    assert round_noise_multiplier(1.0, 4, 0.5) == pytest.approx(0.5)


def test_a_job_records_epsilon_for_weighted_means_only() -> None:
    settings = privacy_settings(2.0, 1.0, [4, 4], [0.25, 0.5], strategy="fedavg", unit="site")
    assert settings["epsilon"] == pytest.approx(gaussian_epsilon([1.0, 0.5], 1e-5))
    assert settings["unit_of_privacy"] == "site" and settings["delta"] == 1e-5
    assert settings["noise_stddev_per_round"] == [0.5, 0.5]
    trimmed = privacy_settings(2.0, 1.0, [4], [0.25], strategy="trimmed_mean")
    assert trimmed["epsilon"] is None and "trimmed_mean" in trimmed["accounting"]
    silent = privacy_settings(2.0, 0.0, [4], [0.25])
    assert silent["epsilon"] is None and "no noise" in silent["accounting"]
    assert privacy_settings(None, 0.0, []) == {"mechanism": "none"}
