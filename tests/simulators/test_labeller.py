"""The simulated labelling system: which records get labels, when, and that the truth follows drift."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiomqtt
import numpy as np
import pytest

from edge_agent.training_buffer import Samples
from edge_gateway.config import DeviceClass
from edge_gateway.filters import Reducer
from fleet_protocol import LabelBatch, TelemetryBatch, decode, encode
from fleet_protocol.labels import Label
from simulators.agent_host import AgentHost
from simulators.fleet_view import FleetView
from simulators.labeller import Labeller, chosen
from simulators.scenario import Scenario, load_scenario
from tests.gateway.factories import record
from tests.utils.broker import Mosquitto
from tests.utils.waiting import wait_until

DEMO = Path(__file__).parents[2] / "fleet_configs" / "demo.yaml"


def test_the_choice_of_records_is_a_stable_share_by_device_and_seq() -> None:
    picked = [s for s in range(1, 20_001) if chosen("site-0-press-0001", s, 0.2)]
    assert 0.19 < len(picked) / 20_000 < 0.21
    assert picked == [s for s in range(1, 20_001) if chosen("site-0-press-0001", s, 0.2)], "same every run"
    assert picked != [s for s in range(1, 20_001) if chosen("site-0-press-0002", s, 0.2)], "per device"
    assert not any(chosen("d", s, 0.0) for s in range(1, 1000))
    assert all(chosen("d", s, 1.0) for s in range(1, 1000))


def test_the_gateway_sends_whole_exactly_the_records_the_labeller_labels() -> None:
    reducer = Reducer([])
    sampled = DeviceClass(name="c", sample_rate=0.2)
    routine = [record("dev-7", s, anomaly=False, low_confidence=False) for s in range(1, 5001)]
    whole = {r.seq for r in routine if reducer.forward(sampled, r)}
    assert whole == {s for s in range(1, 5001) if chosen("dev-7", s, 0.2)}


def test_scenarios_declare_labels_and_the_demo_labels_half_two_seconds_late() -> None:
    assert Scenario().labels is None, "off unless configured"
    assert Scenario().records_carry_labels, "without delayed labels, records carry the truth"
    assert not Scenario.model_validate({"labels": {}}).records_carry_labels
    assert Scenario.model_validate({"labels": {}, "inline_labels": True}).records_carry_labels
    demo = load_scenario(DEMO)
    # Half, 2 s late: the demo's jobs have enough labelled records 20 s after its drift.
    assert demo.labels is not None and (demo.labels.share, demo.labels.delay_s) == (0.5, 2.0)
    assert demo.gateway.sample_rate == demo.labels.share, "every labelled record goes up whole"
    assert not demo.records_carry_labels
    with pytest.raises(ValueError, match="share"):
        Scenario.model_validate({"labels": {"share": 1.5}})


def test_the_observer_scores_delayed_labels_whichever_comes_first() -> None:
    view = FleetView()
    records = [record("dev-1", s, predicted=s % 2, label=None) for s in range(1, 5)]
    batch = TelemetryBatch(device_id="dev-1", site="site-a", records=records[:2])
    late = TelemetryBatch(device_id="dev-1", site="site-a", records=records[2:])

    def labels(*pairs: tuple[int, int]) -> bytes:
        return encode(
            LabelBatch(device_id="dev-1", site="site-a", labels=[Label(seq=s, label=c) for s, c in pairs])
        )

    view.add("fleet/site-a/dev-1/labels", labels((3, 1), (4, 1)))  # before their records
    view.add("fleet/site-a/dev-1/telemetry", encode(batch))
    view.add("fleet/site-a/dev-1/labels", labels((1, 1), (2, 1)))  # after theirs
    assert (view.correct, view.labelled) == (1, 2)
    view.add("fleet/site-a/dev-1/telemetry", encode(late))
    assert (view.correct, view.labelled) == (2, 4), "seq 3 (predicted 1) right, seq 4 (predicted 0) wrong"
    view.add("fleet/site-a/dev-1/labels", labels((1, 1)))  # sent again: scored once
    assert view.labelled == 4 and view.rejected == 0
    assert view.accuracy_between(0, float("inf")) == 0.5


async def _collect(port: int, into: list[LabelBatch], ready: asyncio.Event) -> None:
    async with aiomqtt.Client("127.0.0.1", port, identifier="label-watcher") as client:
        await client.subscribe("fleet/+/+/labels", qos=1)
        ready.set()
        async for message in client.messages:
            into.append(decode(bytes(message.payload), LabelBatch))  # type: ignore[arg-type]


async def test_labeller_publishes_the_chosen_records_truth_after_the_delay(broker: Mosquitto) -> None:
    got: list[LabelBatch] = []
    ready = asyncio.Event()
    watcher = asyncio.create_task(_collect(broker.port, got, ready))
    await asyncio.wait_for(ready.wait(), 10)
    labeller = Labeller(
        site="site-a", host="127.0.0.1", port=broker.port, share=0.5, delay_s=0.3, client_id="lab"
    )
    labeller.start()
    try:
        truth = [s % 4 for s in range(1, 201)]
        truth[9] = None  # type: ignore[call-overload]  # a reading without truth gets no label
        samples = Samples("m", "1", ["a"], [0.0] * 200, [b"\0\0\0\0"] * 200, [0] * 200, truth)  # type: ignore[arg-type]
        labeller.observe("dev-1", 1, samples)
        assert got == [], "nothing before the delay"
        expected = {s: s % 4 for s in range(1, 201) if s != 10 and chosen("dev-1", s, 0.5)}
        await wait_until(lambda: sum(len(b.labels) for b in got) >= len(expected), 10, "labels published")
        # The watcher can see the last batch before its PUBACK reaches the labeller, which counts
        # a batch as published only once acknowledged: wait for that too, not cancel it mid-way.
        await wait_until(lambda: labeller.published >= len(expected), 10, "publishes acknowledged")
    finally:
        await labeller.close()
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    assert all(b.device_id == "dev-1" and b.site == "site-a" for b in got)
    assert {label.seq: label.label for b in got for label in b.labels} == expected
    assert labeller.published == len(expected) == labeller.scheduled


@pytest.mark.slow
async def test_labels_follow_concept_drift_into_the_devices_training_buffer(
    tmp_path: Path, broker: Mosquitto, bundles, public_key_file
) -> None:  # type: ignore[no-untyped-def]
    host = AgentHost()
    settings = {
        "device_id": "dev-1",
        "site": "site-a",
        "data_dir": str(tmp_path / "dev-1"),
        "model_dir": str(bundles["onnx-fp32"]),
        "trusted_keys": [str(public_key_file)],
        "source": {"kind": "synthetic", "inline_labels": False},
        "mqtt": {"port": broker.port, "reconnect_min_s": 0.1, "reconnect_max_s": 0.5},
        "inference": {"executor": "inline", "micro_batch_max": 32},
    }
    source = {"rate_hz": 200, "seed": 7, "anomaly_rate": 0.0, "labels": {"share": 0.5, "delay_s": 0.2}}
    try:
        await host.answer({"op": "start", "device": "dev-1", "settings": settings, "source": source})
        agent = host.agents["dev-1"]
        assert agent.training is not None
        training = agent.training
        await wait_until(lambda: training.live_counts().labelled >= 300, 30, "labels joined before drift")
        before, labelled = training.live_counts().samples, training.live_counts().labelled
        # Concept drift: what looks like class 1 is class 2 now, and the other way round.
        await host.answer({"op": "source", "devices": ["dev-1"], "relabel": {"1": 2, "2": 1}})
        await wait_until(lambda: training.live_counts().samples >= before + 600, 30, "readings after drift")
        await wait_until(lambda: training.live_counts().labelled >= labelled + 300, 30, "labels after drift")
        status = await host.answer({"op": "status"})
    finally:
        await host.close()
    rows = training_rows(tmp_path / "dev-1" / "training.sqlite")
    old = rows[rows[:, 0] <= before]
    new = rows[rows[:, 0] > before + 64]  # past the micro-batches read before the switch
    swapped = lambda part: part[np.isin(part[:, 1], [1, 2])]  # noqa: E731
    agree_before = float(np.mean(swapped(old)[:, 1] == swapped(old)[:, 2]))
    agree_after = float(np.mean(swapped(new)[:, 1] == swapped(new)[:, 2]))
    assert agree_before > 0.9, "labels match the model before the drift"
    assert agree_after < 0.1, "the labels carry the new truth: the model is wrong on classes 1 and 2"
    assert status["labels"]["published"] >= labelled + 300


def training_rows(path: Path) -> np.ndarray:
    """(seq, predicted, label) of the labelled samples, read as a trainer would (read-only)."""
    import sqlite3

    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT seq, predicted, label FROM samples WHERE label IS NOT NULL ORDER BY seq")
        return np.array(rows.fetchall(), dtype=np.int64)
