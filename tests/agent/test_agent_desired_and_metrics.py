"""Desired state flows down and is kept; metrics are served; the byte budget is honoured."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import aiomqtt

from edge_agent.agent import Agent
from fleet_protocol import DesiredState, Encoding, ModelAssignment, ModelReason, desired_topic, encode
from fleet_protocol.pacing import ByteBudget
from tests.agent.factories import agent_config, settings
from tests.utils.broker import Mosquitto, free_port
from tests.utils.subscriber import FleetSubscriber
from tests.utils.waiting import wait_until


async def _publish_retained(port: int, topic: str, payload: bytes) -> None:
    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.publish(topic, payload, qos=1, retain=True)


async def test_desired_state_switches_encoding_is_reported_and_survives_restart(
    tmp_path: Path, broker: Mosquitto, bundles, public_key_file
) -> None:  # type: ignore[no-untyped-def]
    config = agent_config(tmp_path, port=broker.port, bundle=bundles["onnx-fp32"], public_key=public_key_file)
    desired = DesiredState(
        device_id="dev-1",
        revision=7,
        telemetry_encoding=Encoding.MSGPACK,
        model=ModelAssignment(model_id="sensor-mlp", version="2.0.0", manifest_sha256="b" * 64),
    )
    async with FleetSubscriber(broker.port) as sub:
        agent = Agent(settings(config))
        task = asyncio.create_task(agent.run())
        await wait_until(lambda: len(sub.records) > 5, 20, "json telemetry")
        assert sub.encodings[0] == ord("{")
        await _publish_retained(broker.port, desired_topic("site-a", "dev-1"), encode(desired))
        await wait_until(
            lambda: sub.states.get("dev-1") is not None and sub.states["dev-1"].desired_revision == 7, 10
        )
        before = len(sub.encodings)
        await wait_until(lambda: len(sub.encodings) > before + 3, 10, "more telemetry")
        assert sub.encodings[-1] >= 0x80, "telemetry now goes as msgpack"
        await wait_until(lambda: sub.states["dev-1"].model_reason is not None, 10, "a model reason")
        state = sub.states["dev-1"]
        assert state.model_reason is ModelReason.DOWNLOAD_FAILED, "a bundle without an address cannot come"
        assert "update to sensor-mlp@2.0.0 failed" in (state.reason or "")
        agent.stop()
        await asyncio.wait_for(task, 15)

    # Offline restart: the applied desired state comes from disk, not from the broker.
    broker.stop()
    again = Agent(settings(config))
    task = asyncio.create_task(again.run())
    await wait_until(again.started.is_set, 10)
    assert again.desired is not None and again.desired.revision == 7
    assert again.syncer.encoding is Encoding.MSGPACK
    again.stop()
    await asyncio.wait_for(task, 15)


async def test_stale_or_foreign_desired_state_is_ignored(
    tmp_path: Path, broker: Mosquitto, bundles, public_key_file
) -> None:  # type: ignore[no-untyped-def]
    config = agent_config(tmp_path, port=broker.port, bundle=bundles["onnx-fp32"], public_key=public_key_file)
    agent = Agent(settings(config))
    task = asyncio.create_task(agent.run())
    await wait_until(agent.syncer.connected.is_set, 10)
    topic = desired_topic("site-a", "dev-1")
    await _publish_retained(broker.port, topic, encode(DesiredState(device_id="dev-1", revision=5)))
    await wait_until(lambda: agent.desired is not None and agent.desired.revision == 5, 10)
    await _publish_retained(
        broker.port,
        topic,
        encode(DesiredState(device_id="dev-1", revision=4, telemetry_encoding=Encoding.MSGPACK)),
    )
    await _publish_retained(broker.port, topic, encode(DesiredState(device_id="dev-9", revision=99)))
    await _publish_retained(broker.port, topic, b'{"schema_version": 42}')
    await wait_until(
        lambda: agent.metrics.rejected_desired.labels("unknown_schema_version")._value.get() == 1, 10
    )
    assert agent.metrics.rejected_desired.labels("wrong_device")._value.get() == 1
    assert agent.desired is not None and agent.desired.revision == 5
    assert agent.syncer.encoding is Encoding.JSON
    agent.stop()
    await asyncio.wait_for(task, 15)


async def test_metrics_endpoint_serves_prometheus_text(
    tmp_path: Path, broker: Mosquitto, bundles, public_key_file
) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    config = agent_config(
        tmp_path,
        port=broker.port,
        bundle=bundles["onnx-fp32"],
        public_key=public_key_file,
        metrics={"port": port},
    )
    agent = Agent(settings(config))
    task = asyncio.create_task(agent.run())
    await wait_until(lambda: agent.metrics.records_sent._value.get() > 10, 20, "records acked")
    await asyncio.sleep(1.2)  # one housekeeping tick updates the gauges
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    agent.stop()
    await asyncio.wait_for(task, 15)
    for name in (
        "edge_agent_inferences_total",
        "edge_agent_inference_batch_seconds_bucket",
        "edge_agent_outbox_records",
        "edge_agent_sent_bytes_total",
        "edge_agent_mqtt_connected 1.0",
    ):
        assert name in text, name


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now


def test_byte_budget_allows_a_burst_then_the_hourly_rate() -> None:
    clock = FakeClock()
    budget = ByteBudget(3600 * 100, burst_bytes=1000, clock=clock.monotonic)  # 100 bytes/s
    assert budget.delay_for(1000) == 0
    budget.spend(1000)
    assert budget.delay_for(500) == 5.0
    clock.now = 5.0
    assert budget.delay_for(500) == 0
    budget.spend(500)
    clock.now = 1000.0
    assert budget.delay_for(1000) == 0, "tokens refill up to the burst, no further"
    budget.spend(1000)
    assert budget.delay_for(1) > 0


def test_byte_budget_lets_an_oversized_message_through_once_full() -> None:
    clock = FakeClock()
    budget = ByteBudget(3600 * 100, burst_bytes=1000, clock=clock.monotonic)
    assert budget.delay_for(50_000) == 0, "a message larger than the burst waits for a full bucket only"
