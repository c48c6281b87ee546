from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from fleet_learning.exceptions import DataError
from fleet_learning.local_data import read_buffer, read_local, write_buffer
from fleet_learning.recipes import FLEET_FEATURE_NAMES
from tests.learning.data import sensor_data


def test_buffer_yields_labelled_samples_oldest_first(tmp_path: Path) -> None:
    x, y = sensor_data(10, seed=1)
    path = write_buffer(tmp_path / "training.sqlite", FLEET_FEATURE_NAMES, x, y)
    with sqlite3.connect(path) as db:  # the agent has not received labels for two samples yet
        db.execute("UPDATE samples SET label = NULL WHERE seq IN (2, 5)")

    data = read_buffer(path, FLEET_FEATURE_NAMES)

    keep = [i for i in range(10) if i not in (1, 4)]
    np.testing.assert_array_equal(data.x, x[keep])
    np.testing.assert_array_equal(data.y, y[keep])
    assert len(read_buffer(path, FLEET_FEATURE_NAMES, limit=3)) == 3
    np.testing.assert_array_equal(read_buffer(path, FLEET_FEATURE_NAMES, limit=3).y, y[[7, 8, 9]])


def test_buffer_is_opened_read_only(tmp_path: Path) -> None:
    x, y = sensor_data(5, seed=1)
    path = write_buffer(tmp_path / "training.sqlite", FLEET_FEATURE_NAMES, x, y)
    before = path.read_bytes()

    read_buffer(path, FLEET_FEATURE_NAMES)

    assert path.read_bytes() == before


def test_split_keeps_every_fifth_sample_for_evaluation(tmp_path: Path) -> None:
    x, y = sensor_data(20, seed=1)
    np.savez(tmp_path / "node.npz", x=x, y=y)

    train, held_out = read_local(tmp_path / "node.npz", FLEET_FEATURE_NAMES).split()

    assert (len(train), len(held_out)) == (16, 4)
    np.testing.assert_array_equal(held_out.x, x[4::5])


def test_buffer_errors_say_what_is_wrong(tmp_path: Path) -> None:
    x, y = sensor_data(5, seed=1)
    other = write_buffer(tmp_path / "other.sqlite", [f"g{i}" for i in range(16)], x, y)
    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(b"garbage" * 200)

    with pytest.raises(DataError, match="does not exist"):
        read_buffer(tmp_path / "missing.sqlite", FLEET_FEATURE_NAMES)
    with pytest.raises(DataError, match="the model takes"):
        read_buffer(other, FLEET_FEATURE_NAMES)
    with pytest.raises(DataError, match="not a database"):
        read_buffer(corrupt, FLEET_FEATURE_NAMES)


async def test_reads_the_buffer_the_agent_writes(tmp_path: Path) -> None:
    """The shared contract: edge_agent.training_buffer writes, fleet_learning reads (read-only)."""
    from edge_agent.training_buffer import Samples, TrainingBuffer
    from fleet_protocol.labels import Label

    x, y = sensor_data(6, seed=2)
    agent_buffer = TrainingBuffer(tmp_path / "training.sqlite")
    await agent_buffer.open()
    agent_buffer.add(
        101,
        Samples(
            model_id="sensor-mlp",
            model_version="1.0.0",
            feature_names=FLEET_FEATURE_NAMES,
            ts=[1.0 + i for i in range(6)],
            features=[row.astype("<f4").tobytes() for row in x],
            predicted=[0] * 6,
        ),
    )
    agent_buffer.add_labels([Label(seq=101 + i, label=int(y[i])) for i in (0, 2, 3, 5)])
    await agent_buffer.close()

    data = read_buffer(tmp_path / "training.sqlite", FLEET_FEATURE_NAMES)

    np.testing.assert_array_equal(data.x, x[[0, 2, 3, 5]])
    np.testing.assert_array_equal(data.y, y[[0, 2, 3, 5]])
