"""Offline for days: an agent goes through more than 10,000 failed connections and still delivers.

Backoff used to compute ``2**attempt`` as a float: attempt 1,024 raised `OverflowError` and
took the daemon down (about four hours without a broker at the defaults). Tiny backoff settings
drive the same code through that many real failed connections to a closed port in seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest

from edge_agent.agent import Agent
from fleet_protocol.pacing import Backoff
from tests.agent.factories import agent_config, settings
from tests.utils.broker import Mosquitto, port_for_an_outage
from tests.utils.subscriber import FleetSubscriber
from tests.utils.waiting import wait_until

ATTEMPTS = 10_001
TINY = {"reconnect_min_s": 0.0001, "reconnect_max_s": 0.0005}


def test_backoff_stays_capped_and_jittered_after_a_million_attempts() -> None:
    backoff = Backoff(0.5, 30.0)
    backoff.attempt = 1_000_000
    delays = [backoff.next_delay() for _ in range(1000)]
    assert all(0.5 <= d <= 30.0 for d in delays)
    assert max(delays) > 25 and min(delays) < 5, "full jitter over [minimum, cap]"
    assert backoff.attempt == 1_001_000
    backoff.reset()
    assert backoff.ceiling() == 0.5


def test_backoff_refuses_a_cap_below_its_minimum() -> None:
    with pytest.raises(ValueError, match="minimum <= maximum"):
        Backoff(5.0, 1.0)


def _link_errors(agent: Agent) -> float:
    return agent.metrics.link_errors._value.get()


@pytest.mark.slow
async def test_agent_survives_10000_failed_connections_then_delivers_every_record_once(
    tmp_path: Path, bundles, public_key_file
) -> None:  # type: ignore[no-untyped-def]
    port = port_for_an_outage()
    total = 3000
    config = agent_config(
        tmp_path,
        port=port,
        bundle=bundles["onnx-fp32"],
        public_key=public_key_file,
        source={"kind": "synthetic", "rate_hz": None, "limit": total, "seed": 7},
        mqtt=TINY,
    )
    agent = Agent(settings(config))
    broker = Mosquitto(tmp_path / "broker", port=port)
    async with _subscriber_with_a_session_kept_by(broker) as sub:
        task = asyncio.create_task(agent.run())
        await wait_until(lambda: _link_errors(agent) >= ATTEMPTS, 240, f"{ATTEMPTS} failed connections")
        assert not task.done(), "the agent is still running after more than 10,000 failed connections"
        assert agent.syncer.backoff.attempt >= ATTEMPTS - 1
        assert agent.outbox.stats.last_seq == total, "it went on inferring and storing offline"

        await asyncio.to_thread(broker.start)
        await wait_until(lambda: agent.outbox.stats.depth == 0, 60, "outbox drained")
        await wait_until(lambda: len(sub.records) >= total, 30, "every record at the subscriber")
        agent.stop()
        await asyncio.wait_for(task, 15)
    seqs = [r.seq for r in sub.records if r.device_id == "dev-1"]
    assert sorted(seqs) == list(range(1, total + 1)), "every record delivered exactly once"
    assert agent.syncer.backoff.attempt == 0, "a good connection resets the backoff"


@contextlib.asynccontextmanager
async def _subscriber_with_a_session_kept_by(broker: Mosquitto) -> AsyncIterator[FleetSubscriber]:
    """A subscriber whose persistent session the broker keeps while it is down.

    The broker starts once so the session exists, and stops: on its next start it queues what
    the agent publishes at once, before the subscriber is back.
    """
    await asyncio.to_thread(broker.start)
    async with FleetSubscriber(broker.port) as sub:
        await asyncio.to_thread(broker.stop)
        try:
            yield sub
        finally:
            await asyncio.to_thread(broker.stop)


@pytest.mark.slow
async def test_mqtt_sensor_source_survives_10000_failed_connections_then_reads_again(
    tmp_path: Path, bundles, public_key_file
) -> None:  # type: ignore[no-untyped-def]
    """The sensor bus and the site broker are the same dead port; both come back together."""
    port = port_for_an_outage()
    config = agent_config(
        tmp_path,
        port=port,
        bundle=bundles["onnx-fp32"],
        public_key=public_key_file,
        source={"kind": "mqtt", "port": port, "topic": "sensors/dev-1", **TINY},
        mqtt=TINY,
    )
    agent = Agent(settings(config))
    source = agent.source
    broker = Mosquitto(tmp_path / "broker", port=port)
    async with _subscriber_with_a_session_kept_by(broker) as sub:
        task = asyncio.create_task(agent.run())
        await wait_until(
            lambda: source.backoff.attempt >= ATTEMPTS and _link_errors(agent) >= ATTEMPTS,
            240,
            f"{ATTEMPTS} failed connections of the source and of the sync",
        )
        assert not task.done()
        await asyncio.to_thread(broker.start)
        await wait_until(lambda: source._link.connected and agent.syncer.link.connected, 30, "reconnected")
        names = agent.model.manifest.preprocessing.feature_names  # type: ignore[union-attr]
        readings = 500
        async with aiomqtt.Client("127.0.0.1", port) as sensor:
            for i in range(readings):
                values = {name: float((i + j) % 7) for j, name in enumerate(names)}
                await sensor.publish("sensors/dev-1", json.dumps({"values": values}), qos=1)
        await wait_until(lambda: len(sub.records) >= readings, 60, "every reading inferred and delivered")
        agent.stop()
        await asyncio.wait_for(task, 15)
    seqs = sorted(r.seq for r in sub.records)
    assert seqs == list(range(1, readings + 1)), "each reading read once, stored once, delivered once"
    assert source.backoff.attempt == 0
