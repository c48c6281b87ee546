"""Offline for days: a gateway goes through more than 10,000 failed attempts on each link.

First its broker is down (the site's MQTT link), then its controller (the uplink). Tiny backoff
settings drive the real code through that many real failures in seconds; a float ``2**attempt``
used to overflow at attempt 1,024 and end the daemon. When both come back, every record the
devices produced is at the controller, each once.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import pytest

from tests.gateway.conftest import controller_rows
from tests.gateway.fleet import Fleet
from tests.gateway.upstream import controller_on, forwarding_gateway, stored_records
from tests.utils.broker import Mosquitto, port_for_an_outage
from tests.utils.waiting import wait_until

pytestmark = pytest.mark.slow

ATTEMPTS = 10_001
TINY = {"min": 0.0001, "max": 0.0005}


async def test_gateway_survives_10000_failed_attempts_on_each_link_then_delivers_every_record_once(
    tmp_path: Path, bundles, public_key_file: Path, gateway_factory
) -> None:  # type: ignore[no-untyped-def]
    broker = Mosquitto(tmp_path / "broker", port=port_for_an_outage())
    controller = await asyncio.to_thread(
        controller_on, port_for_an_outage(), tmp_path / "controller", public_key_file
    )
    gateway = forwarding_gateway(
        gateway_factory,
        controller,
        {"port": broker.port, "reconnect_min_s": TINY["min"], "reconnect_max_s": TINY["max"]},
        linger_s=0.1,
        retry_min_s=TINY["min"],
        retry_max_s=TINY["max"],
    )
    link_errors = "edge_gateway_mqtt_link_errors_total"
    uplink_errors = 'edge_gateway_upstream_failures_total{reason="network"}'

    def metric(name: str) -> float:
        try:
            return gateway.metric(name)
        except Exception:  # not listening yet
            return 0.0

    await wait_until(lambda: metric(link_errors) >= ATTEMPTS, 240, f"{ATTEMPTS} failed broker connections")
    assert gateway.alive(), "the gateway is still running after 10,000 failed broker connections"

    await asyncio.to_thread(broker.start)
    await asyncio.to_thread(gateway.wait_healthy)
    fleet = Fleet(
        tmp_path / "agents",
        devices=4,
        broker_port=broker.port,
        bundle=bundles["onnx-fp32"],
        key_file=public_key_file,
        rate_hz=200.0,
        readings=300,
    )
    try:
        async with fleet:
            await wait_until(fleet.drained, 60, "every outbox drained into the broker")
            await wait_until(lambda: metric(uplink_errors) >= ATTEMPTS, 240, f"{ATTEMPTS} failed uploads")
            assert gateway.alive(), "the gateway is still running after 10,000 failed uploads"
            produced = {
                (a.settings.device_id, s) for a in fleet.agents for s in range(1, a.outbox.stats.last_seq + 1)
            }
        assert len(produced) == 4 * 300

        await asyncio.to_thread(controller.start)
        db = controller.database_url

        def counted() -> int:
            return controller_rows(db, "SELECT COALESCE(SUM(count), 0) FROM window_summary")[0][0]

        await wait_until(
            lambda: stored_records(db) >= len(produced) and counted() >= len(produced),
            90,
            "everything at the controller",
        )
        whole = {(d, int(s)) for d, s in controller_rows(db, "SELECT device_id, seq FROM telemetry")}
        assert whole == produced, "every record stored whole, none missing, none extra"
        in_summaries: Counter[tuple[str, int]] = Counter()
        for device, summary in controller_rows(db, "SELECT device_id, summary FROM window_summary"):
            for low, high in json.loads(summary)["seq_ranges"]:
                in_summaries.update((device, seq) for seq in range(low, high + 1))
        assert set(in_summaries) == produced, "the summaries count every record"
        assert max(in_summaries.values()) == 1, "and none twice"
    finally:
        await asyncio.to_thread(controller.stop)
        await asyncio.to_thread(broker.stop)
