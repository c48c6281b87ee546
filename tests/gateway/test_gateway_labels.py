"""Delayed labels through the gateway: validated, queued durably before the ack, sent up by device."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from edge_gateway.config import UpstreamConfig, load_settings
from edge_gateway.controller_client import ControllerClient
from edge_gateway.metrics import GatewayMetrics
from edge_gateway.mqtt_link import Message
from edge_gateway.pipeline import Pipeline
from edge_gateway.store import Changes, GatewayStore
from edge_gateway.uplink import Uplink, ingest_body
from fleet_protocol import LabelBatch, decode, encode
from fleet_protocol.ingest import MAX_INGEST_RECORDS, IngestBatch
from fleet_protocol.labels import MAX_LABELS, Label
from tests.controller.conftest import Controller
from tests.gateway.conftest import GatewayProcess
from tests.utils.broker import Mosquitto
from tests.utils.waiting import wait_until

T0 = 1_800_000_000.0


def _labels(device: str, seqs: range | list[int], *, site: str = "site-a", cls: int = 1) -> bytes:
    batch = LabelBatch(
        device_id=device,
        site=site,
        labels=[Label(seq=s, label=cls, labelled_at=T0 + s, source="station-1") for s in seqs],
    )
    return encode(batch)


def _messages(*pairs: tuple[str, bytes]) -> list[Message]:
    return [Message(topic, payload, False, 1, i + 1, 1) for i, (topic, payload) in enumerate(pairs)]


def _pipeline(tmp_path: Path) -> Pipeline:
    settings = load_settings(None, gateway_id="gw-1", site="site-a", data_dir=str(tmp_path))
    return Pipeline(settings, GatewayMetrics())


async def test_labels_are_queued_per_label_and_go_up_grouped_by_device_the_later_label_of_a_seq_kept(
    tmp_path: Path,
) -> None:
    pipeline = _pipeline(tmp_path)
    store = GatewayStore(tmp_path / "gateway.sqlite")
    pipeline.restore(await store.open())
    changes = pipeline.process(
        _messages(
            ("fleet/site-a/dev-1/labels", _labels("dev-1", [1, 2], cls=0)),
            ("fleet/site-a/dev-2/labels", _labels("dev-2", [5], cls=3)),
            ("fleet/site-a/dev-1/labels", _labels("dev-1", [2], cls=4)),  # a correction of seq 2
        ),
        now=T0,
    )
    assert [kind for kind, _ in changes.upstream] == ["label"] * 4
    assert not changes.dead_letters
    await store.commit(changes)
    assert store.depth == 4
    assert pipeline.metrics.labels_received._value.get() == 4

    batch = await store.next_batch(100, 1 << 20)
    assert batch is not None
    parsed = decode(ingest_body(batch, site="site-a", gateway_id="gw-1"), IngestBatch)
    assert parsed.schema_version == 4
    got = {d.device_id: {label.seq: label.label for label in d.labels} for d in parsed.labels}
    assert got == {"dev-1": {1: 0, 2: 4}, "dev-2": {5: 3}}, "one entry per device, the correction wins"
    assert parsed.records == [] and parsed.events == []
    await store.close()


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        ("fleet/site-a/dev-1/labels", _labels("dev-2", [1]), "device_mismatch"),
        ("fleet/site-a/dev-1/labels", _labels("dev-1", [1], site="site-b"), "site_mismatch"),
        ("fleet/site-a/dev-1/labels", b'{"schema_version": 1, "device_id": "dev-1"}', "malformed"),
        (
            "fleet/site-a/dev-1/labels",
            json.dumps(
                {
                    "schema_version": 1,
                    "device_id": "dev-1",
                    "site": "site-a",
                    "labels": [{"seq": 3, "label": 1}, {"seq": 3, "label": 2}],
                }
            ).encode(),
            "malformed",
        ),
        ("fleet/site-a/dev-1/labels", json.dumps({"schema_version": 7}).encode(), "unknown_schema_version"),
    ],
)
def test_a_label_batch_that_breaks_the_contract_is_dead_lettered_and_counted(
    tmp_path: Path, topic: str, payload: bytes, reason: str
) -> None:
    pipeline = _pipeline(tmp_path)
    changes = pipeline.process(_messages((topic, payload)), now=T0)
    assert changes.upstream == []
    assert [(t, r) for _, t, r, _, _ in changes.dead_letters] == [(topic, reason)]
    assert pipeline.metrics.label_messages_rejected.labels(reason)._value.get() == 1
    assert pipeline.metrics.rejected.labels(reason)._value.get() == 1
    assert pipeline.metrics.labels_received._value.get() == 0


async def test_an_ingest_batch_carries_at_most_max_ingest_records_labels(tmp_path: Path) -> None:
    pipeline = _pipeline(tmp_path)
    store = GatewayStore(tmp_path / "gateway.sqlite")
    pipeline.restore(await store.open())
    devices = [f"dev-{i}" for i in range(6)]
    await store.commit(
        pipeline.process(
            _messages(*((f"fleet/site-a/{d}/labels", _labels(d, range(1, 1001))) for d in devices)), now=T0
        )
    )
    assert store.depth == 6000
    sent = 0
    while (batch := await store.next_batch(5000, 64 << 20)) is not None:
        parsed = IngestBatch.model_validate_json(ingest_body(batch, site="site-a", gateway_id="gw-1"))
        count = sum(len(d.labels) for d in parsed.labels)
        assert count <= MAX_INGEST_RECORDS
        sent += count
        await store.sent(batch)
    assert sent == 6000
    await store.close()


async def test_a_label_the_controller_refuses_is_found_by_halving_and_the_others_go_up(
    tmp_path: Path, controller: Controller
) -> None:
    store = GatewayStore(tmp_path / "gateway.sqlite")
    await store.open()
    good = [
        ("label", b'{"device_id":"dev-1","labels":[{"seq":%d,"label":1,"labelled_at":1.0}]}' % s)
        for s in range(1, 8)
    ]
    # A row the gateway itself would never queue (a class below 0): the controller refuses it.
    bad = ("label", b'{"device_id":"dev-1","labels":[{"seq":99,"label":-1,"labelled_at":1.0}]}')
    await store.commit(Changes(upstream=[*good[:3], bad, *good[3:]]))
    metrics = GatewayMetrics()
    client = ControllerClient(controller.url, controller.tokens["gateway"], timeout_s=10)
    uplink = Uplink(
        site="site-a",
        gateway_id="gw-1",
        config=UpstreamConfig(url=controller.url, token="x", linger_s=0, retry_min_s=0.05, retry_max_s=0.1),
        store=store,
        client=client,
        metrics=metrics,
    )
    task = asyncio.create_task(uplink.run())
    try:
        await wait_until(lambda: store.depth == 0, within=30, what="the queue drained")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.close()
    letters = await store.dead_letters()
    assert [(topic, reason[:8]) for _, topic, reason, _, _ in letters] == [("upstream/label", "refused_")]
    assert letters[0][4] == bad[1], "the one refused label, kept whole"
    assert metrics.labels_forwarded._value.get() == 7, "every other label went up"
    await store.close()


def _publish_all(port: int, messages: list[tuple[str, bytes]]) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="labeller")
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        for topic, payload in messages:
            client.publish(topic, payload, qos=1).wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()


def _queued_labels(gateway: GatewayProcess) -> set[tuple[str, int]]:
    path = Path(gateway.config["data_dir"]) / "gateway.sqlite"
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10) as db:
        rows = db.execute("SELECT body FROM upstream WHERE kind = 'label'").fetchall()
    out: set[tuple[str, int]] = set()
    for (body,) in rows:
        item: dict[str, Any] = json.loads(body)
        out.update((item["device_id"], label["seq"]) for label in item["labels"])
    return out


@pytest.mark.slow
def test_kill_minus_9_loses_no_label_the_broker_acknowledged(broker: Mosquitto, gateway_factory) -> None:  # type: ignore[no-untyped-def]
    # No upstream: everything the gateway takes stays in its queue, where the test reads it.
    gateway: GatewayProcess = gateway_factory({"broker": {"host": "127.0.0.1", "port": broker.port}})
    messages = [
        (f"fleet/site-a/dev-{d}/labels", _labels(f"dev-{d}", range(b * 50 + 1, b * 50 + 51)))
        for b in range(8)
        for d in range(5)
    ]
    expected = {(f"dev-{d}", s) for d in range(5) for s in range(1, 401)}
    _publish_all(broker.port, messages[:20])
    gateway.kill()  # whatever it took and did not acknowledge, the broker still holds
    _publish_all(broker.port, messages[20:])  # acknowledged by the broker while the gateway is down
    gateway.start()
    deadline = time.monotonic() + 30
    while _queued_labels(gateway) != expected and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _queued_labels(gateway) == expected, "every acknowledged label is in the upstream queue"


async def test_more_than_max_labels_of_one_device_go_up_in_several_entries_the_controller_takes(
    tmp_path: Path, controller: Controller
) -> None:
    pipeline = _pipeline(tmp_path)
    store = GatewayStore(tmp_path / "gateway.sqlite")
    pipeline.restore(await store.open())
    chunks = [range(1, 1001), range(1001, 2001), range(2001, 2501)]
    messages = [("fleet/site-a/dev-1/labels", _labels("dev-1", seqs)) for seqs in chunks]
    messages.append(("fleet/site-a/dev-1/labels", _labels("dev-1", [7], cls=2)))  # a correction
    await store.commit(pipeline.process(_messages(*messages), now=T0))
    assert store.depth == 2501

    batch = await store.next_batch(5000, 64 << 20)
    assert batch is not None and len(batch.items) == 2501
    parsed = IngestBatch.model_validate_json(ingest_body(batch, site="site-a", gateway_id="gw-1"))
    assert [len(d.labels) for d in parsed.labels] == [MAX_LABELS, MAX_LABELS, 500]
    assert {d.device_id for d in parsed.labels} == {"dev-1"}

    metrics = GatewayMetrics()
    client = ControllerClient(controller.url, controller.tokens["gateway"], timeout_s=10)
    config = UpstreamConfig(
        url=controller.url, token="x", linger_s=0, retry_min_s=0.05, retry_max_s=0.1, max_records=5000
    )
    uplink = Uplink(
        site="site-a", gateway_id="gw-1", config=config, store=store, client=client, metrics=metrics
    )
    task = asyncio.create_task(uplink.run())
    try:
        await wait_until(lambda: store.depth == 0, within=30, what="the queue drained")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.close()
    assert await store.dead_letters() == []
    assert metrics.upstream_batches._value.get() == 1, "one batch, taken at once (no 422, no halving)"
    assert metrics.labels_forwarded._value.get() == 2501
    db = controller.database_url.removeprefix("sqlite:///")
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
        stored = dict(conn.execute("SELECT seq, label FROM label WHERE device_id = 'dev-1'").fetchall())
    assert len(stored) == 2500 and stored[7] == 2 and stored[2500] == 1
    await store.close()


async def test_a_batch_goes_with_the_lowest_schema_version_its_content_needs(tmp_path: Path) -> None:
    store = GatewayStore(tmp_path / "gateway.sqlite")
    await store.open()
    record = b'{"device_id":"dev-1","seq":1,"ts":1.0,"model_id":"m","model_version":"1","outputs":[0.5]}'
    summary = {
        "device_id": "dev-1",
        "model_id": "m",
        "model_version": "1",
        "window_start": 0.0,
        "window_end": 60.0,
        "first_seq": 2,
        "last_seq": 4,
        "count": 3,
    }
    ranged = json.dumps({**summary, "seq_ranges": [[2, 4]]}).encode()
    label = b'{"device_id":"dev-1","labels":[{"seq":1,"label":1,"labelled_at":1.0}]}'
    versions = []
    for items in (
        [("record", record)],
        [("record", record), ("summary", json.dumps(summary).encode())],
        [("record", record), ("summary", ranged)],
        [("record", record), ("summary", ranged), ("label", label)],
    ):
        await store.commit(Changes(upstream=items))
        batch = await store.next_batch(100, 1 << 20)
        assert batch is not None
        versions.append(
            decode(ingest_body(batch, site="site-a", gateway_id="gw-1"), IngestBatch).schema_version
        )
        await store.sent(batch)
    assert versions == [1, 2, 3, 4], "a batch without labels goes as v3 at most: older controllers take it"
    await store.close()
