"""Sources end to end: a CSV replay and a local MQTT sensor topic, through a real agent."""

from __future__ import annotations

import asyncio
import csv
import json
from pathlib import Path

import aiomqtt
import numpy as np
import pytest

from edge_agent.agent import Agent
from edge_agent.exceptions import ModelLoadError
from edge_agent.model import load_model
from edge_agent.sources.synthetic import FEATURE_NAMES, make_dataset
from tests.agent.factories import agent_config, settings
from tests.utils.broker import Mosquitto
from tests.utils.subscriber import FleetSubscriber
from tests.utils.waiting import wait_until


async def test_csv_replay_feeds_the_agent_in_file_order(
    tmp_path: Path, broker: Mosquitto, bundles, public_key_file
) -> None:  # type: ignore[no-untyped-def]
    x, y = make_dataset(50, seed=31)
    with (tmp_path / "r.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ts", "label", *FEATURE_NAMES])
        for i, (row, label) in enumerate(zip(x, y, strict=True)):
            writer.writerow([2000 + i, int(label), *np.round(row, 6)])
    config = agent_config(
        tmp_path,
        port=broker.port,
        bundle=bundles["onnx-fp32"],
        public_key=public_key_file,
        source={"kind": "replay", "path": str(tmp_path / "r.csv")},
    )
    agent = Agent(settings(config))
    async with FleetSubscriber(broker.port) as sub:
        task = asyncio.create_task(agent.run())
        await wait_until(lambda: len(sub.records) == 50, 20, "50 records")
        agent.stop()
        await asyncio.wait_for(task, 15)
    records = sorted(sub.records, key=lambda r: r.seq)
    assert [r.ts for r in records] == [2000 + i for i in range(50)]
    assert [r.label for r in records] == [int(v) for v in y]
    assert records[0].features is not None and len(records[0].features) == 16


async def test_mqtt_sensor_topic_feeds_the_agent_and_garbage_is_counted(
    tmp_path: Path, broker: Mosquitto, bundles, public_key_file
) -> None:  # type: ignore[no-untyped-def]
    x, _ = make_dataset(20, seed=32)
    config = agent_config(
        tmp_path,
        port=broker.port,
        bundle=bundles["onnx-fp32"],
        public_key=public_key_file,
        source={"kind": "mqtt", "topic": "sensors/dev-1", "port": broker.port},
    )
    agent = Agent(settings(config))
    async with FleetSubscriber(broker.port) as sub:
        task = asyncio.create_task(agent.run())
        await wait_until(agent.syncer.connected.is_set, 10)
        await asyncio.sleep(0.5)  # the sensor subscription is made
        async with aiomqtt.Client("127.0.0.1", broker.port) as sensor:
            for i, row in enumerate(x):
                payload = {"ts": 3000 + i, "values": dict(zip(FEATURE_NAMES, row.tolist(), strict=True))}
                await sensor.publish("sensors/dev-1", json.dumps(payload), qos=1)
            await sensor.publish("sensors/dev-1", b"\xff\xfe not json", qos=1)
            await sensor.publish("sensors/dev-1", json.dumps({"values": ["a"] * 16}), qos=1)
        await wait_until(lambda: len(sub.records) == 20, 20, "20 records")
        await wait_until(lambda: sum(agent.rejected.values()) == 2, 10, "2 rejections")
        agent.stop()
        await asyncio.wait_for(task, 15)
    assert sorted(r.ts for r in sub.records) == [3000 + i for i in range(20)]
    assert agent.rejected == {"missing_feature": 1, "not_a_number": 1}


def test_agent_loader_refuses_a_tampered_bundle(tmp_path: Path, bundles, signing_key) -> None:  # type: ignore[no-untyped-def]
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(bundles["onnx-fp32"], copy)
    data = bytearray((copy / "model.onnx").read_bytes())
    data[-10] ^= 0xFF
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="model.onnx does not match its sha256"):
        load_model(copy, [signing_key.public_key()])
