"""Issue #12: a federated job of 20 devices over 3 rounds wins back accuracy lost to drift.

The production model was trained on the sensor before the drift. Then the fleet's sensors drift
the two ways the fleet simulator drifts them (``simulators/events/drift.py``): a covariate shift
along the physics' drift direction (``SyntheticSource.extra_drift``) and a concept drift that
exchanges classes 1 and 2 (``SyntheticSource.relabel``). Each device holds 150 labelled samples
of the drifted sensor; the held-out set is drifted too and no device has seen it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fleet_learning.federated import ClientSpec, FederatedConfig, RoundStats, run_simulation
from fleet_learning.recipes import TrainingRecipe, build_model, default_recipe
from fleet_learning.trainer import Standardisation, evaluate, fit
from tests.learning.data import sensor_data

pytestmark = pytest.mark.slow

DEVICES = 20
SAMPLES_PER_DEVICE = 150  # a node trains on 4 of every 5 (`LocalData.split`) and keeps the 5th
ROUNDS = 3
CLIENT_SEED, HELD_OUT_SEED = 3000, 500  # 3000..3019 and 500: no device holds a held-out sample
SHIFT = 2.0  # fleet_configs/ci.yaml's drift; the production model keeps 0.87 under the shift alone
SWAP = (1, 2)  # ConceptDrift's default


def drifted_sensor_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The sensor after both drifts: inputs shifted, and what reads as class 1 is truly 2 (and back)."""
    x, y = sensor_data(n, seed=seed, drift=SHIFT)
    a, b = SWAP
    return x, np.where(y == a, b, np.where(y == b, a, y))


def _accuracy(recipe: TrainingRecipe, state, data, standardisation: Standardisation) -> float:  # type: ignore[no-untyped-def]
    model = build_model(recipe)
    model.load_state_dict(state)
    return evaluate(model, *data, standardisation=standardisation).accuracy


def test_twenty_devices_recover_accuracy_on_the_drifted_sensor_in_three_rounds(
    recipe: TrainingRecipe,
) -> None:
    # The production model: the recipe's own training (30 epochs, batch 256) on pre-drift data;
    # its mean/scale stay the job's standardisation, as the bundle's Preprocessing does on devices.
    before_x, before_y = sensor_data(2000, seed=7)
    standardisation = Standardisation.of(before_x)
    torch.manual_seed(0)
    production = build_model(recipe)
    fit(production, before_x, before_y, default_recipe().hyperparameters, standardisation=standardisation)
    production_state = production.state_dict()

    held_out = drifted_sensor_data(1000, seed=HELD_OUT_SEED)
    assert _accuracy(recipe, production_state, sensor_data(1000, seed=HELD_OUT_SEED), standardisation) >= 0.9
    production_accuracy = _accuracy(recipe, production_state, held_out, standardisation)
    # Measured 0.363 (0.378 with other held-out seeds), against 0.98 before the drift: the swapped
    # classes are ~60% of the samples, and the shift alone costs it a tenth.
    assert production_accuracy < 0.5

    clients = [
        ClientSpec(
            f"site-{i % 4}-dev-{i}", f"site-{i % 4}", drifted_sensor_data(SAMPLES_PER_DEVICE, CLIENT_SEED + i)
        )
        for i in range(DEVICES)
    ]
    config = FederatedConfig(
        rounds=ROUNDS,
        min_clients=DEVICES,
        local_epochs=3,  # one or two epochs of ~4 Adam steps each barely move the swapped classes
        federated_evaluation=False,  # the server's held-out set is the measure; one round trip less
        min_samples=SAMPLES_PER_DEVICE // 2,
        num_cpus=1,  # one Ray actor: on a busy 2-core machine it starts sooner than two
    )
    seen: list[RoundStats] = []

    result = run_simulation(
        config,
        recipe,
        production_state,
        clients,
        standardisation=standardisation,
        held_out=held_out,
        on_round=seen.append,
    )

    per_round = [s.central_accuracy for s in result.rounds if s.central_accuracy is not None]
    print(f"production {production_accuracy:.3f} on the drifted held-out set; per round {per_round}")
    assert seen == result.rounds and len(result.rounds) == ROUNDS
    assert len(per_round) == ROUNDS  # the server evaluated every round's global model
    for stats in result.rounds:
        assert (stats.sampled, stats.responded, stats.declined, stats.failed) == (DEVICES, DEVICES, 0, 0)
        assert stats.aggregated and not stats.failures
        assert stats.examples == DEVICES * (SAMPLES_PER_DEVICE - SAMPLES_PER_DEVICE // 5)
    assert result.initial_accuracy == pytest.approx(production_accuracy)
    final = _accuracy(recipe, result.state_dict, held_out, standardisation)
    assert final == pytest.approx(result.final_accuracy)
    # Measured per round: 0.485, 0.962, 0.982 (other client/held-out seeds: 0.508, 0.967, 0.982 and
    # 0.516, 0.956, 0.982), from 0.363: a gain of ~0.6, asserted with room for noise.
    assert per_round[-1] > per_round[0]
    assert per_round[-1] >= 0.9 and per_round[-1] >= production_accuracy + 0.5
    assert final >= per_round[-1]  # the job keeps its best round's weights
