"""Fleets of simulated learning nodes: good devices, a broken one, one whose sensor saturates."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Message, Metadata, RecordDict

from fleet_learning.federated import ClientSpec
from fleet_learning.local_data import write_buffer
from fleet_learning.recipes import TrainingRecipe, build_model, default_recipe
from fleet_learning.trainer import Standardisation
from tests.learning.data import sensor_data


@pytest.fixture(autouse=True)
def flower_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Flower writes its state under FLWR_HOME: one per test, no telemetry, no update check."""
    home = tmp_path / "flwr-home"
    monkeypatch.setenv("FLWR_HOME", str(home))
    monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", "0")
    monkeypatch.setenv("FLWR_DISABLE_UPDATE_CHECK", "1")
    yield home


@pytest.fixture
def recipe() -> TrainingRecipe:
    recipe = default_recipe()
    recipe.hyperparameters.batch_size = 32
    return recipe


@pytest.fixture
def initial_state(recipe: TrainingRecipe) -> dict[str, torch.Tensor]:
    """An untrained model: what the federation has to improve."""
    torch.manual_seed(0)
    return build_model(recipe).state_dict()


@pytest.fixture
def standardisation() -> Standardisation:
    """The production bundle's mean/scale, from its original training data."""
    return Standardisation.of(sensor_data(2000, seed=7)[0])


@pytest.fixture
def held_out() -> tuple[np.ndarray, np.ndarray]:
    return sensor_data(1000, seed=500)


def good_device(tmp_path: Path, name: str, site: str, seed: int, n: int = 300) -> ClientSpec:
    """A device whose agent keeps labelled samples in its training buffer."""
    x, y = sensor_data(n, seed=seed)
    buffer = write_buffer(tmp_path / name / "training.sqlite", default_recipe().feature_names, x, y)
    return ClientSpec(name, site, buffer)


def crashing_device(tmp_path: Path, site: str) -> ClientSpec:
    """Its buffer is garbage on disk: the ClientApp raises in the middle of the round."""
    path = tmp_path / "crash" / "training.sqlite"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x00garbage" * 512)
    return ClientSpec("crash", site, path)


def saturated_device(site: str) -> ClientSpec:
    """A sensor stuck at float32's maximum: training overflows and the update is NaN."""
    x, y = sensor_data(300, seed=77)
    return ClientSpec("nan", site, (np.full_like(x, 3.0e38), y))


def instruction(content: RecordDict, message_type: str, node_id: int = 1) -> Message:
    """A message as the server's Grid delivers it to a node (outside a Flower run)."""
    metadata = Metadata(
        run_id=1,
        message_id=f"m-{node_id}-{message_type}",
        src_node_id=0,
        dst_node_id=node_id,
        reply_to_message_id="",
        group_id="1",
        created_at=time.time(),
        ttl=600.0,
        message_type=message_type,
    )
    return Message(content=content, metadata=metadata)
