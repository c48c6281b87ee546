"""Hostile MQTT input to a running `edge-gateway`: no crash, every rejection counted and kept."""

from __future__ import annotations

import itertools
import json
import time
from typing import Any

import msgpack
import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.gateway.conftest import GatewayProcess
from tests.gateway.factories import record
from tests.utils.broker import Mosquitto

pytestmark = pytest.mark.slow

_seq = itertools.count(1)

_BAD_VALUES = {
    "seq": [0, -1, 2**64, "1", None, 1.5],
    "ts": [float("nan"), float("inf"), "yesterday", None],
    "outputs": [["a"], [float("inf")], "0.1", [[0.1]], list(range(5000))],
    "confidence": [1.5, -0.1, float("nan")],
    "anomaly": ["yes", None],
    "features": [[float("nan")], "x"],
}


def _valid_batch(device: str = "dev-1") -> dict[str, Any]:
    records = [record(device, next(_seq)).model_dump(mode="json", exclude_none=True) for _ in range(3)]
    return {"schema_version": 1, "device_id": device, "site": "site-a", "records": records}


@st.composite
def hostile(draw: st.DrawFn) -> tuple[str, bytes]:
    """A message the gateway must refuse: ``(topic, payload)``."""
    kind = draw(st.sampled_from(["telemetry", "state", "events"]))
    topic = f"fleet/site-a/dev-1/{kind}"
    choice = draw(st.integers(0, 6))
    if choice == 0:  # noise
        return topic, draw(st.binary(min_size=1, max_size=512))
    if choice == 1:  # a bad id in the topic
        bad = draw(st.sampled_from(["dev 1", "dév", "a" * 65, "-dev", ".."]))
        return f"fleet/site-a/{bad}/telemetry", json.dumps(_valid_batch()).encode()
    batch = _valid_batch()
    if choice == 2:  # one field of one record made wrong
        field = draw(st.sampled_from(sorted(_BAD_VALUES)))
        batch["records"][draw(st.integers(0, 2))][field] = draw(st.sampled_from(_BAD_VALUES[field]))
    elif choice == 3:  # the envelope made wrong
        mutation = draw(
            st.sampled_from(["version", "unknown_field", "no_records", "other_device", "other_site"])
        )
        if mutation == "version":
            batch["schema_version"] = draw(st.sampled_from([0, 2, 99, "1", True, None]))
        elif mutation == "unknown_field":
            batch["surprise"] = 1
        elif mutation == "no_records":
            batch["records"] = []
        elif mutation == "other_device":
            batch = _valid_batch("dev-2")
        else:
            batch["site"] = "site-b"
        if mutation in ("other_device", "other_site") and kind != "telemetry":
            topic = "fleet/site-a/dev-1/telemetry"
    elif choice == 4:  # deep nesting
        depth = draw(st.integers(100, 5000))
        return topic, b"[" * depth + b"]" * depth
    elif choice == 5:  # a record from another device inside the batch
        batch["records"][0]["device_id"] = "dev-9"
    else:  # the right shape on the wrong topic kind
        topic = "fleet/site-a/dev-1/state" if kind == "telemetry" else "fleet/site-a/dev-1/telemetry"
        if kind == "telemetry":
            return topic, json.dumps(batch).encode()
        return topic, json.dumps(
            {"schema_version": 1, "device_id": "dev-1", "kind": "x.y", "message": "m"}
        ).encode()
    text = json.dumps(batch).encode()  # NaN and Infinity become bare literals, as a sloppy device would send
    if draw(st.booleans()):
        text = msgpack.packb(batch)
    return topic, text


def _counts(gateway: GatewayProcess) -> tuple[float, float]:
    metrics = gateway.metrics()
    rejected = sum(v for k, v in metrics.items() if k.startswith("edge_gateway_rejected_total"))
    return rejected, metrics.get('edge_gateway_messages_total{kind="telemetry"}', 0.0)


def _wait_for(
    gateway: GatewayProcess, rejected: float, telemetry: float, within: float = 15.0
) -> tuple[float, float]:
    deadline = time.monotonic() + within
    counts = _counts(gateway)
    while counts != (rejected, telemetry) and time.monotonic() < deadline:
        time.sleep(0.05)
        counts = _counts(gateway)
    return counts


def test_hostile_payloads_are_rejected_counted_and_dead_lettered_without_a_crash(
    broker: Mosquitto, gateway_factory
) -> None:  # type: ignore[no-untyped-def]
    gateway: GatewayProcess = gateway_factory({"broker": {"host": "127.0.0.1", "port": broker.port}})
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fuzzer")
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:

        def publish(topic: str, payload: bytes) -> None:
            client.publish(topic, payload, qos=1).wait_for_publish(10)

        publish("fleet/site-a/dev-1/telemetry", b"x" * (300 * 1024))  # over the size limit
        assert _wait_for(gateway, 1, 0) == (1, 0)

        @settings(
            max_examples=60,
            deadline=None,
            derandomize=True,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        )
        @given(st.lists(hostile(), min_size=1, max_size=6), st.integers(0, 2))
        def round_of_messages(messages: list[tuple[str, bytes]], valid: int) -> None:
            rejected, telemetry = _counts(gateway)
            for topic, payload in messages:
                publish(topic, payload)
            for _ in range(valid):
                publish("fleet/site-a/dev-1/telemetry", json.dumps(_valid_batch()).encode())
            expected = (rejected + len(messages), telemetry + valid)
            assert _wait_for(gateway, *expected) == expected, messages

        round_of_messages()
    finally:
        client.loop_stop()
        client.disconnect()
    assert gateway.alive(), "the gateway survived"
    health = gateway.metrics()
    assert health["edge_gateway_mqtt_connected"] == 1
    reasons = {reason for _, reason in gateway.dead_letters()}
    assert {"malformed", "invalid_topic", "too_large"} <= reasons
    assert health["edge_gateway_records_total"] >= 3, "valid records kept flowing between hostile ones"
