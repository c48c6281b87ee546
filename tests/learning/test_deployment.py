"""edgefleet's Flower App on the Deployment Engine, as real processes on 127.0.0.1.

The cloud's SuperLink has two nodes: a device of site-b (a SuperNode reading its agent's training
buffer) and the gateway of site-a, a SuperNode that runs a SuperLink of its own with two devices of
site-a behind it. ``flwr run`` starts the job in the cloud; the gateway runs its site's round and
sends one update upstream.
"""

from __future__ import annotations

import json
import time
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
from tests.learning.flower_processes import Federation, free_port
from tests.learning.test_simulation import MODEL_BYTES

pytestmark = pytest.mark.slow

APP = Path(fleet_learning.__file__).parent / "flower_app"
SAMPLES = 300  # per device; a fifth is kept for local evaluation, the rest trains


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[Federation]:
    federation = Federation(tmp_path / "federation")
    yield federation
    left = federation.stop()
    assert not left, f"processes survived the federation: {left}"


def _buffer(tmp_path: Path, recipe: TrainingRecipe, name: str, seed: int) -> str:
    x, y = sensor_data(SAMPLES, seed=seed)
    return str(write_buffer(tmp_path / name / "training.sqlite", recipe.feature_names, x, y))


def test_flwr_run_over_a_device_and_a_gateway_with_its_own_devices(
    tmp_path: Path,
    federation: Federation,
    recipe: TrainingRecipe,
    initial_state: dict[str, torch.Tensor],
    standardisation: Standardisation,
    held_out,
) -> None:
    federation.start_superlink()
    site_link = federation.start_superlink("site-a-superlink", free_port())
    federation.start_supernode(
        "gateway-a",
        {
            "site": "site-a",
            "site-superlink": f"127.0.0.1:{site_link}",
            "site-min-devices": "2",
            **federation.site_node_config(),
        },
    )
    for i in range(2):
        buffer = _buffer(tmp_path, recipe, f"agent-a{i}", seed=40 + i)
        federation.start_supernode(
            f"device-a{i}", {"buffer-path": buffer, "site": "site-a"}, superlink=site_link
        )
    federation.start_supernode(
        "device-b0", {"buffer-path": _buffer(tmp_path, recipe, "agent-b0", seed=42), "site": "site-b"}
    )
    config = FederatedConfig(
        strategy="fedprox",
        mu=0.01,
        rounds=1,
        min_clients=2,
        local_epochs=3,
        federated_evaluation=False,
        round_timeout_s=150,
    )
    job = write_job_dir(tmp_path / "job", ServerJob(config, recipe, initial_state, standardisation, held_out))

    run = federation.flwr("run", str(APP), "edgefleet", "--run-config", f'job-dir="{job}"')
    assert run.returncode == 0, run.stdout + run.stderr
    federation.wait_for(job / RESULT_FILE, timeout=240)

    result = json.loads((job / RESULT_FILE).read_text())
    (round_1,) = result["rounds"]
    assert (round_1["sampled"], round_1["responded"], round_1["failed"]) == (2, 2, 0)
    assert round_1["examples"] == 3 * SAMPLES * 4 // 5  # the gateway's reply carries its two devices'
    assert round_1["bytes_up"] == 2 * MODEL_BYTES  # one update per site crossed into the cloud
    assert json.loads((job / ROUNDS_FILE).read_text()) == round_1
    model = build_model(recipe)
    model.load_state_dict(torch.load(job / RESULT_STATE_FILE, weights_only=True))
    after = evaluate(model, *held_out, standardisation=standardisation).accuracy
    assert after == pytest.approx(result["final_accuracy"])
    assert after > result["initial_accuracy"] + 0.2
    # The ServerApp writes its result before it exits: the run is marked finished a moment later.
    deadline = time.monotonic() + 60
    while True:
        status = federation.flwr("ls", "edgefleet", "--format", "json", timeout=60)
        if '"finished:completed"' in status.stdout or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert '"finished:completed"' in status.stdout, status.stdout + status.stderr
