"""A gateway over its controller's ingest rate keeps each refused batch, waits Retry-After, loses nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from cloud_controller.models import Role
from simulators.controller import ControllerProcess
from tests.controller.conftest import Controller, as_controller
from tests.gateway.conftest import GatewayProcess, controller_rows
from tests.gateway.factories import telemetry
from tests.utils.broker import Mosquitto
from tests.utils.waiting import wait_until

#: The controller takes 50 items a second from a gateway token, 50 at once; the gateway sends
#: batches of up to 50 items, so every batch after the first few waits its turn.
RATE, BURST, BATCH = 50, 50, 50
RECORDS = 300


@pytest.fixture
def limited(tmp_path: Path, public_key_file: Path) -> Iterator[Controller]:
    process = ControllerProcess(tmp_path / "controller", public_key_file, token_prefix="test")
    process.env["EDGEFLEET_CONTROLLER__INGEST_RECORDS_PER_S"] = str(RATE)
    process.env["EDGEFLEET_CONTROLLER__INGEST_BURST_RECORDS"] = str(BURST)
    process.start((("gateway", Role.GATEWAY, "site-a"),))
    try:
        yield as_controller(process, tmp_path / "controller")
    finally:
        process.stop()


def _publish(port: int, device: str, seqs: range, per_message: int = 25) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{device}-publisher")
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        for start in range(seqs.start, seqs.stop, per_message):
            chunk = range(start, min(start + per_message, seqs.stop))
            client.publish(
                f"fleet/site-a/{device}/telemetry", telemetry(device, chunk), qos=1
            ).wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()


async def test_rate_limited_gateway_keeps_its_batches_and_every_record_arrives_once(
    broker: Mosquitto, limited: Controller, gateway_factory
) -> None:  # type: ignore[no-untyped-def]
    gateway: GatewayProcess = await asyncio.to_thread(
        gateway_factory,
        {
            "broker": {"host": "127.0.0.1", "port": broker.port},
            "upstream": {
                "url": limited.url,
                "token": limited.tokens["gateway"],
                "linger_s": 0.1,
                "max_records": BATCH,
                # Far shorter than Retry-After: a gateway that backed off on its own instead would
                # be refused many times per batch.
                "retry_min_s": 0.01,
                "retry_max_s": 0.05,
            },
            "device_classes": [{"name": "all", "forward_all": True}],
        },
    )
    await asyncio.to_thread(_publish, broker.port, "dev-1", range(1, RECORDS + 1))

    def stored() -> int:
        return int(controller_rows(limited.database_url, "SELECT COUNT(*) FROM telemetry")[0][0])

    # 300 records and the device's state at 50 items/s after a burst of 50: about 5 s.
    await wait_until(lambda: stored() == RECORDS, 30, "every record stored at the controller")
    rows = await asyncio.to_thread(
        controller_rows, limited.database_url, "SELECT device_id, seq FROM telemetry ORDER BY seq"
    )
    assert rows == [("dev-1", s) for s in range(1, RECORDS + 1)]
    told_to_wait = await asyncio.to_thread(
        gateway.metric, 'edge_gateway_upstream_failures_total{reason="429"}'
    )
    with limited.client(None) as client:
        refused = next(
            float(line.split()[-1])
            for line in client.get("/metrics").text.splitlines()
            if line.startswith('edgefleet_ingest_rejected_total{reason="rate_limited"}')
        )
    batches = RECORDS // BATCH
    assert told_to_wait == refused >= 1, "the limit was reached"
    # Honouring Retry-After, a batch is refused at most once or twice (the jitter is upward);
    # retrying every 10-50 ms it would be refused dozens of times.
    assert refused <= 2 * batches, (
        f"{refused:.0f} refusals for {batches} batches: Retry-After was not honoured"
    )
    assert await asyncio.to_thread(gateway.dead_letters) == [], "a 429 is no refusal of the content"
