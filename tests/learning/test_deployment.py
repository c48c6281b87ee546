"""edgefleet's Flower App on the Deployment Engine: a SuperLink and three SuperNodes as real processes,
each SuperNode reading an agent's training buffer, driven by ``flwr run``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import fleet_learning
from fleet_learning.config import FederatedConfig
from fleet_learning.local_data import write_buffer
from fleet_learning.recipes import TrainingRecipe, build_model
from fleet_learning.server_app import RESULT_FILE, RESULT_STATE_FILE, ROUNDS_FILE, ServerJob, write_job_dir
from fleet_learning.trainer import Standardisation, evaluate
from tests.learning.data import sensor_data
from tests.learning.flower_processes import Federation

pytestmark = pytest.mark.slow

APP = Path(fleet_learning.__file__).parent / "flower_app"


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[Federation]:
    federation = Federation(tmp_path / "federation")
    yield federation
    left = federation.stop()
    assert not left, f"processes survived the federation: {left}"


def test_flwr_run_trains_on_three_supernodes_reading_agent_buffers(
    tmp_path: Path,
    federation: Federation,
    recipe: TrainingRecipe,
    initial_state: dict[str, torch.Tensor],
    standardisation: Standardisation,
    held_out,
) -> None:
    federation.start_superlink()
    for i in range(3):
        x, y = sensor_data(300, seed=40 + i)
        buffer = write_buffer(tmp_path / f"agent-{i}" / "training.sqlite", recipe.feature_names, x, y)
        federation.start_supernode(
            f"supernode-{i}", {"buffer-path": str(buffer), "site": f"site-{i % 2}", "node-name": f"dev-{i}"}
        )
    config = FederatedConfig(
        strategy="fedprox",
        mu=0.01,
        rounds=1,
        min_clients=3,
        local_epochs=3,
        federated_evaluation=False,
        round_timeout_s=120,
    )
    job = write_job_dir(tmp_path / "job", ServerJob(config, recipe, initial_state, standardisation, held_out))

    run = federation.flwr("run", str(APP), "edgefleet", "--run-config", f'job-dir="{job}"')
    assert run.returncode == 0, run.stdout + run.stderr
    federation.wait_for(job / RESULT_FILE, timeout=150)

    result = json.loads((job / RESULT_FILE).read_text())
    (round_1,) = result["rounds"]
    assert (round_1["sampled"], round_1["responded"], round_1["failed"]) == (3, 3, 0)
    assert json.loads((job / ROUNDS_FILE).read_text()) == round_1
    model = build_model(recipe)
    model.load_state_dict(torch.load(job / RESULT_STATE_FILE, weights_only=True))
    after = evaluate(model, *held_out, standardisation=standardisation).accuracy
    assert after == pytest.approx(result["final_accuracy"])
    assert after > result["initial_accuracy"] + 0.2
    status = federation.flwr("ls", "edgefleet", "--format", "json", timeout=60)
    assert '"finished:completed"' in status.stdout, status.stdout + status.stderr
