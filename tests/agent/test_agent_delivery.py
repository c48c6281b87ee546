"""The agent against a real Mosquitto: delivery through broker restarts, offline operation."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from edge_agent.agent import Agent
from tests.agent.factories import agent_config, settings
from tests.utils.broker import Mosquitto, free_port
from tests.utils.subscriber import FleetSubscriber
from tests.utils.waiting import wait_until


@pytest.mark.slow
async def test_10000_records_survive_three_broker_restarts(
    tmp_path: Path, broker: Mosquitto, bundles, public_key_file
) -> None:  # type: ignore[no-untyped-def]
    total = 10_000
    config = agent_config(
        tmp_path,
        port=broker.port,
        bundle=bundles["onnx-int8"],
        public_key=public_key_file,
        source={"kind": "synthetic", "rate_hz": 1500, "limit": total, "seed": 3},
        mqtt={"batch_max_records": 50},
    )
    agent = Agent(settings(config))
    async with FleetSubscriber(broker.port) as sub:
        task = asyncio.create_task(agent.run())
        for _ in range(3):
            await asyncio.sleep(1.2)
            await asyncio.to_thread(broker.stop)
            await wait_until(lambda: not agent.syncer.connected.is_set(), 10, "the agent saw the broker go")
            await asyncio.sleep(0.4)  # the agent keeps inferring into its outbox meanwhile
            await asyncio.to_thread(broker.start)
            await wait_until(agent.syncer.connected.is_set, 20, "the agent back on the broker")
        await wait_until(agent.source_done.is_set, 60)
        await wait_until(lambda: len(sub.seqs("dev-1")) >= total and agent.outbox.stats.depth == 0, 60)
        agent.stop()
        await asyncio.wait_for(task, 15)
    assert sub.errors == []
    assert sub.seqs("dev-1") == set(range(1, total + 1)), "every (device_id, seq) arrived"
    assert agent.outbox.stats.depth == 0 and agent.outbox.stats.pending == 0
    assert agent.metrics.connects._value.get() >= 4, "the agent reconnected after each restart"


async def test_agent_infers_and_stores_with_no_broker_then_delivers_when_one_appears(
    tmp_path: Path, bundles, public_key_file
) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    config = agent_config(
        tmp_path,
        port=port,
        bundle=bundles["onnx-fp32"],
        public_key=public_key_file,
        source={"kind": "synthetic", "rate_hz": None, "limit": 2000, "seed": 4},
    )
    agent = Agent(settings(config))
    task = asyncio.create_task(agent.run())
    await wait_until(lambda: agent.outbox.stats.depth == 2000, 30)
    assert agent.metrics.inferences._value.get() == 2000
    assert not agent.syncer.connected.is_set()

    # The subscriber's persistent session exists before the broker the agent knows starts: the
    # agent may connect and publish the moment it listens, and those records must wait for it.
    early = Mosquitto(tmp_path / "late-broker")
    early.start()
    try:
        async with FleetSubscriber(early.port) as sub:
            pass
    finally:
        early.stop()  # SIGTERM: the session is saved with the broker's persistence
    late = Mosquitto(tmp_path / "late-broker", port=port)
    late.start()
    try:
        async with FleetSubscriber(port, client_id=sub.client_id) as sub:
            await wait_until(lambda: agent.outbox.stats.depth == 0, 30)
            await wait_until(lambda: len(sub.seqs("dev-1")) == 2000, 30)
        agent.stop()
        await asyncio.wait_for(task, 15)
    finally:
        late.stop()
    records = sorted(sub.records, key=lambda r: r.seq)
    assert [r.seq for r in records][:3] == [1, 2, 3]
    assert all(r.model_id == "sensor-mlp" and r.model_version == "1.0.0" for r in records)
    accuracy = sum(r.predicted == r.label for r in records) / len(records)
    assert accuracy > 0.9, "the device model's predictions match the sensor's ground truth"
    assert any(r.anomaly for r in records) and all(r.anomaly == (r.predicted == 3) for r in records)


async def test_clean_stop_publishes_offline_state_and_retained_state_tracks_the_device(
    tmp_path: Path, broker: Mosquitto, bundles, public_key_file
) -> None:  # type: ignore[no-untyped-def]
    config = agent_config(
        tmp_path, port=broker.port, bundle=bundles["openvino-fp32"], public_key=public_key_file
    )
    agent = Agent(settings(config))
    async with FleetSubscriber(broker.port) as sub:
        task = asyncio.create_task(agent.run())
        await wait_until(lambda: "dev-1" in sub.states and sub.states["dev-1"].online, 20)
        state = sub.states["dev-1"]
        assert (state.model_id, state.model_version, state.runtime) == ("sensor-mlp", "1.0.0", "openvino")
        assert state.health.value == "ok"
        await wait_until(lambda: len(sub.seqs("dev-1")) > 20, 20)
        agent.stop()
        await asyncio.wait_for(task, 15)
        await wait_until(lambda: not sub.states["dev-1"].online, 10)
    assert sub.states["dev-1"].last_seq >= 20


async def test_bandwidth_budget_limits_what_the_agent_sends(
    tmp_path: Path, broker: Mosquitto, bundles, public_key_file
) -> None:  # type: ignore[no-untyped-def]
    budget = 360_000  # bytes per hour = 100 bytes/s; burst 6000 bytes
    config = agent_config(
        tmp_path,
        port=broker.port,
        bundle=bundles["onnx-fp32"],
        public_key=public_key_file,
        source={"kind": "synthetic", "rate_hz": 200, "seed": 5},
        mqtt={"bandwidth_bytes_per_hour": budget, "batch_max_records": 5},
    )
    agent = Agent(settings(config))
    async with FleetSubscriber(broker.port) as sub:
        task = asyncio.create_task(agent.run())
        await asyncio.sleep(3.0)
        sent = sub.telemetry_bytes
        agent.stop()
        await asyncio.wait_for(task, 15)
    # At most one burst plus 100 bytes/s for 3 s (plus one batch let through at the edge).
    assert 0 < sent <= 6000 + 300 + 2000
    assert agent.outbox.stats.depth > 100, "what the budget holds back waits in the outbox"
