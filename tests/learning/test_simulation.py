"""Federated rounds on Flower's simulation engine (Ray), with faulty clients among good ones."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fleet_learning.federated import ClientSpec, FederatedConfig, RoundStats, run_simulation
from fleet_learning.recipes import build_model
from fleet_learning.trainer import evaluate
from tests.learning.conftest import crashing_device, good_device, saturated_device
from tests.learning.data import sensor_data

pytestmark = pytest.mark.slow

#: The MLP's float32 weights as a message carries them (each array with its .npy header).
MODEL_BYTES = (16 * 64 + 64 + 64 * 4 + 4) * 4 + 4 * 128


def _accuracy(recipe, state, held_out, standardisation) -> float:
    model = build_model(recipe)
    model.load_state_dict(state)
    return evaluate(model, *held_out, standardisation=standardisation).accuracy


def test_fedavg_round_survives_a_crashing_and_a_nan_client(
    tmp_path: Path, recipe, initial_state, standardisation, held_out
) -> None:
    few = sensor_data(8, seed=3)
    clients = [
        good_device(tmp_path, "dev-0", "site-a", seed=10),
        good_device(tmp_path, "dev-1", "site-a", seed=11),
        good_device(tmp_path, "dev-2", "site-b", seed=12),
        ClientSpec("few-labels", "site-b", few),
        crashing_device(tmp_path, "site-b"),
        saturated_device("site-a"),
    ]
    seen: list[RoundStats] = []
    config = FederatedConfig(
        rounds=3, min_clients=3, local_epochs=2, min_samples=20, target_accuracy=0.85, num_cpus=1
    )

    result = run_simulation(
        config,
        recipe,
        initial_state,
        clients,
        standardisation=standardisation,
        held_out=held_out,
        on_round=seen.append,
    )

    assert seen == result.rounds
    for stats in result.rounds:
        assert (stats.sampled, stats.responded, stats.declined, stats.failed) == (6, 3, 1, 2)
        assert stats.aggregated
        assert stats.bytes_up == 4 * MODEL_BYTES  # three good updates and the NaN one
        assert stats.cloud_uplink_bytes == stats.bytes_up and stats.updates_to_cloud == 3
        assert any("not a database" in f for f in stats.failures)
        assert any("non-finite" in f for f in stats.failures)
        assert stats.accuracy is not None and stats.loss is not None  # federated evaluation
    assert all(torch.isfinite(v).all() for v in result.state_dict.values())
    initial = _accuracy(recipe, initial_state, held_out, standardisation)
    final = _accuracy(recipe, result.state_dict, held_out, standardisation)
    assert result.initial_accuracy == pytest.approx(initial)
    assert final == pytest.approx(result.final_accuracy)
    assert final > initial + 0.3
    assert final >= 0.85 and "reached target accuracy" in result.stopped_because
    assert result.mean == pytest.approx(standardisation.mean.tolist())
    assert result.privacy == {"mechanism": "none"}


def test_hierarchical_trimmed_mean_sends_one_update_per_site_of_the_job(
    tmp_path: Path, recipe, initial_state, standardisation, held_out
) -> None:
    clients = [
        good_device(tmp_path, f"{site}-dev-{i}", site, seed=20 + 10 * s + i)
        for s, site in enumerate(["site-a", "site-b", "site-c", "site-d"])
        for i in range(2)
    ] + [saturated_device("site-a")]
    config = FederatedConfig(
        strategy="trimmed_mean",
        trim_fraction=0.34,
        hierarchical=True,
        groups=["site-a", "site-b", "site-c"],  # site-d's devices are not part of this job
        rounds=2,
        min_clients=3,
        local_epochs=2,
        clip_norm=50.0,
        noise_multiplier=0.001,
        federated_evaluation=False,
        num_cpus=1,  # one Ray actor: on a busy 2-core machine it starts sooner than two
    )

    result = run_simulation(
        config, recipe, initial_state, clients, standardisation=standardisation, held_out=held_out
    )

    assert len(result.rounds) == 2
    for stats in result.rounds:
        assert (stats.sampled, stats.responded, stats.declined, stats.failed) == (9, 6, 2, 1)
        assert stats.updates_to_cloud == 3  # one per site, not one per device
        assert stats.cloud_uplink_bytes == 3 * MODEL_BYTES
        assert stats.bytes_up == 7 * MODEL_BYTES  # six devices and the NaN one reached their gateway
        assert stats.aggregated
    assert result.privacy["clipping_norm"] == 50.0
    assert result.privacy["updates_per_round"] == [3, 3]
    final = _accuracy(recipe, result.state_dict, held_out, standardisation)
    assert final == pytest.approx(result.final_accuracy)
    assert final > _accuracy(recipe, initial_state, held_out, standardisation) + 0.3
