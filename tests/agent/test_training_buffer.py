"""The agent's training buffer: samples keyed by seq, joined with delayed labels, bounded in bytes."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from edge_agent.agent import Agent
from edge_agent.training_buffer import ROW_OVERHEAD, Samples, TrainingBuffer
from fleet_protocol import LabelBatch, encode, labels_topic
from fleet_protocol.labels import Label
from tests.agent.factories import agent_config, settings
from tests.utils.broker import Mosquitto
from tests.utils.subscriber import FleetSubscriber
from tests.utils.waiting import wait_until

NAMES = ["a", "b", "c"]


def _samples(n: int, *, start: float = 0.0, names: list[str] = NAMES) -> Samples:
    x = (np.arange(n * len(names), dtype=np.float32).reshape(n, len(names)) + start).astype("<f4")
    return Samples(
        model_id="m",
        model_version="1.0.0",
        feature_names=names,
        ts=[1000.0 + i for i in range(n)],
        features=[row.tobytes() for row in x],
        predicted=[i % 4 for i in range(n)],
    )


async def test_labels_join_samples_by_seq_and_trainers_read_them_newest_first(tmp_path: Path) -> None:
    buffer = TrainingBuffer(tmp_path / "training.sqlite")
    await buffer.open()
    buffer.add(1, _samples(5))
    buffer.add(6, _samples(5, start=100.0))
    buffer.add_labels([Label(seq=2, label=3), Label(seq=7, label=1), Label(seq=99, label=0)])
    buffer.add_labels([Label(seq=7, label=2)])  # a correction: the last label wins
    await buffer.flush()

    x, y = buffer.labelled()
    assert x.dtype == np.float32 and y.dtype == np.int64
    assert y.tolist() == [2, 3], "seq 7 (newest, corrected), then seq 2"
    np.testing.assert_array_equal(x[0], np.array([103.0, 104.0, 105.0], dtype=np.float32))
    np.testing.assert_array_equal(x[1], np.array([3.0, 4.0, 5.0], dtype=np.float32))
    assert buffer.labelled(limit=1)[1].tolist() == [2]
    counts = buffer.counts()
    assert (counts.samples, counts.labelled) == (10, 2)
    assert (counts.labels_matched, counts.labels_unmatched) == (3, 1), "seq 99 is not held: unmatched"
    assert counts == buffer.live_counts()
    await buffer.close()

    with sqlite3.connect(tmp_path / "training.sqlite") as db:
        columns = [row[1] for row in db.execute("PRAGMA table_info(samples)")]
        meta = dict(db.execute("SELECT key, value FROM meta"))
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert columns == [
        "seq",
        "ts",
        "model_id",
        "model_version",
        "features",
        "predicted",
        "label",
        "labelled_at",
    ]
    assert json.loads(meta["feature_names"]) == NAMES and meta["schema_version"] == "1"


async def test_the_byte_bound_evicts_the_oldest_samples_and_counts_them(tmp_path: Path) -> None:
    per_row = 3 * 4 + ROW_OVERHEAD
    buffer = TrainingBuffer(tmp_path / "training.sqlite", max_bytes=100 * per_row)
    await buffer.open()
    for first in range(1, 301, 50):
        buffer.add(first, _samples(50))
        await buffer.flush()
    buffer.add_labels([Label(seq=5, label=1), Label(seq=290, label=1)])
    await buffer.flush()
    counts = buffer.counts()
    assert counts.samples == 100 and counts.bytes <= 100 * per_row
    assert counts.evicted == 200
    assert (counts.labels_matched, counts.labels_unmatched) == (1, 1), "seq 5 was evicted"
    with sqlite3.connect(tmp_path / "training.sqlite") as db:
        assert db.execute("SELECT MIN(seq), MAX(seq) FROM samples").fetchone() == (201, 300)
    await buffer.close()

    reopened = TrainingBuffer(tmp_path / "training.sqlite", max_bytes=100 * per_row)
    await reopened.open()
    assert reopened.live_counts() == counts, "counts survive a restart"
    await reopened.close()


async def test_counts_made_on_the_loop_while_the_writer_writes_are_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writing, resume = threading.Event(), threading.Event()
    evict = TrainingBuffer._evict

    def held_evict(conn: sqlite3.Connection, excess: int) -> tuple[int, int, int]:
        writing.set()  # the writer's thread is inside its transaction: the loop counts meanwhile
        assert resume.wait(10)
        return evict(conn, excess)

    monkeypatch.setattr(TrainingBuffer, "_evict", staticmethod(held_evict))
    buffer = TrainingBuffer(tmp_path / "training.sqlite")
    await buffer.open()
    buffer.add(1, _samples(5))
    buffer.add_labels([Label(seq=2, label=1)])
    flushing = asyncio.create_task(buffer.flush())
    assert await asyncio.to_thread(writing.wait, 10)
    buffer.refused(2)
    resume.set()
    await flushing
    live = buffer.live_counts()
    assert (live.labels_refused, live.labels_matched) == (2, 1), "the refusals counted during the write"
    assert buffer.counts() == live, "and persisted with it"
    await buffer.close()


async def test_labels_waiting_for_the_writer_are_bounded_the_oldest_dropped_and_counted(
    tmp_path: Path,
) -> None:
    buffer = TrainingBuffer(tmp_path / "training.sqlite")
    await buffer.open()
    buffer.add(1, _samples(5))
    for batch in range(25):  # 25,000 labels before the writer runs: 5,000 past the bound
        buffer.add_labels([Label(seq=1 + (batch * 1000 + i) % 5, label=batch % 4) for i in range(1000)])
    assert buffer.live_counts().labels_dropped == 5000
    await buffer.flush()
    counts = buffer.counts()
    assert counts.labels_dropped == 5000 and counts.labels_matched == 20_000
    assert buffer.labelled()[1].tolist() == [24 % 4] * 5, "the newest labels were kept"
    await buffer.close()


async def test_samples_of_other_input_features_start_the_buffer_over(tmp_path: Path) -> None:
    buffer = TrainingBuffer(tmp_path / "training.sqlite")
    await buffer.open()
    buffer.add(1, _samples(4))
    buffer.add_labels([Label(seq=1, label=1)])
    await buffer.flush()
    buffer.add(5, _samples(2, names=["a", "b", "c", "d"]))
    await buffer.flush()
    counts = buffer.counts()
    assert (counts.samples, counts.labelled, counts.evicted) == (2, 0, 4)
    assert buffer.feature_names() == ["a", "b", "c", "d"]
    assert buffer.labelled()[0].shape == (0, 4)
    await buffer.close()


async def test_another_process_reads_the_buffer_read_only_while_the_agent_writes(tmp_path: Path) -> None:
    path = tmp_path / "training.sqlite"
    buffer = TrainingBuffer(path)
    await buffer.open()
    buffer.add(1, _samples(20))
    buffer.add_labels([Label(seq=s, label=s % 3) for s in range(1, 11)])
    await buffer.flush()
    script = (
        "import sys; from pathlib import Path; from edge_agent.training_buffer import TrainingBuffer\n"
        "b = TrainingBuffer.open_readonly(Path(sys.argv[1])); x, y = b.labelled()\n"
        "print(x.shape[0], x.shape[1], int(y.sum()), b.counts().samples)\n"
        "try:\n"
        "    b.add_labels([])\n"
        "except AssertionError:\n"
        "    print('refused')\n"
    )
    out = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["10", "3", str(sum(s % 3 for s in range(1, 11))), "20", "refused"]
    await buffer.close()


def _publish(port: int, pairs: list[tuple[str, bytes]]) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="line-station")
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        for topic, payload in pairs:
            client.publish(topic, payload, qos=1).wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()


@pytest.mark.slow
async def test_agent_keeps_inputs_joins_delayed_labels_and_keeps_truth_out_of_records(
    tmp_path: Path, broker: Mosquitto, bundles, public_key_file
) -> None:  # type: ignore[no-untyped-def]
    total = 300
    config = agent_config(
        tmp_path,
        port=broker.port,
        bundle=bundles["onnx-fp32"],
        public_key=public_key_file,
        source={"kind": "synthetic", "rate_hz": None, "limit": total, "seed": 5, "inline_labels": False},
    )
    truth: dict[int, int | None] = {}

    def observe(first_seq: int, samples: Samples) -> None:
        truth.update(zip(range(first_seq, first_seq + len(samples.truth)), samples.truth, strict=True))

    agent = Agent(settings(config), on_stored=observe)
    assert agent.training is not None
    async with FleetSubscriber(broker.port) as sub:
        task = asyncio.create_task(agent.run())
        await wait_until(lambda: len(sub.seqs("dev-1")) == total, 60, "every record delivered")
        await wait_until(
            lambda: agent.training is not None and agent.training.live_counts().samples == total, 10
        )
        chosen = list(range(1, total + 1, 3))
        batch = LabelBatch(
            device_id="dev-1", site="site-a", labels=[Label(seq=s, label=truth[s]) for s in chosen]
        )
        other = LabelBatch(device_id="dev-2", site="site-a", labels=[Label(seq=1, label=0)])
        late = LabelBatch(device_id="dev-1", site="site-a", labels=[Label(seq=10_000, label=0)])
        topic = labels_topic("site-a", "dev-1")
        await asyncio.to_thread(
            _publish,
            broker.port,
            [(topic, encode(batch)), (topic, b"{not json"), (topic, encode(other)), (topic, encode(late))],
        )
        labels = agent.metrics.training_labels
        await wait_until(
            lambda: (
                labels.labels("matched")._value.get() == len(chosen)
                and labels.labels("unmatched")._value.get() == 1
                and labels.labels("refused")._value.get() == 2
            ),
            15,
            "labels counted by outcome",
        )
        x, y = await asyncio.to_thread(agent.training.labelled)
        agent.stop()
        await asyncio.wait_for(task, 15)
    assert all(r.label is None for r in sub.records), "inline_labels: false keeps the truth out of records"
    assert y.tolist() == [truth[s] for s in reversed(chosen)]
    features = {r.seq: r.features for r in sub.records}
    np.testing.assert_allclose(x, np.array([features[s] for s in reversed(chosen)]), atol=1e-5)
    assert agent.metrics.training_labelled._value.get() == len(chosen)
    assert agent.metrics.training_samples._value.get() == total
