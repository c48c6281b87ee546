"""A device's presence reaches the controller within ``state_refresh_s`` while a backlog drains.

The gateway queues every record (``forward_all``) while the controller is away; when it comes back
the queue drains a small batch at a time. A device that starts meanwhile must not wait behind
thousands of records to be seen online: each batch keeps room for device states.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.gateway.conftest import controller_rows
from tests.gateway.fleet import Fleet
from tests.gateway.upstream import controller_on, forwarding_gateway, stored_records
from tests.utils.broker import Mosquitto, port_for_an_outage
from tests.utils.waiting import wait_until

pytestmark = pytest.mark.slow

REFRESH_S = 5.0
BACKLOG = 4 * 1500
INGEST_RATE = 300  # items a second: the backlog takes about 20 s to drain


async def test_a_new_devices_presence_overtakes_a_draining_backlog(
    tmp_path: Path, broker: Mosquitto, bundles, public_key_file: Path, gateway_factory
) -> None:  # type: ignore[no-untyped-def]
    controller = await asyncio.to_thread(
        controller_on, port_for_an_outage(), tmp_path / "controller", public_key_file
    )
    # The controller takes the backlog slowly (429 with Retry-After past the rate): the drain lasts
    # several times state_refresh_s, so a state queued behind it would arrive late.
    controller.env["EDGEFLEET_CONTROLLER__INGEST_RECORDS_PER_S"] = str(INGEST_RATE)
    controller.env["EDGEFLEET_CONTROLLER__INGEST_BURST_RECORDS"] = str(INGEST_RATE)
    gateway = forwarding_gateway(
        gateway_factory,
        controller,
        {"port": broker.port},
        linger_s=0.05,
        retry_min_s=0.1,
        retry_max_s=0.3,
        max_records=100,
        state_refresh_s=REFRESH_S,
    )
    # Subscribed before the devices publish: a broker keeps messages only for sessions it knows.
    await wait_until(lambda: "connected to broker" in gateway.log.read_text(), 30, "the gateway subscribed")
    db = controller.database_url
    backlog = Fleet(
        tmp_path / "agents",
        devices=4,
        broker_port=broker.port,
        bundle=bundles["onnx-fp32"],
        key_file=public_key_file,
        rate_hz=1000.0,
        readings=BACKLOG // 4,
    )
    late = Fleet(
        tmp_path / "late",
        devices=1,
        first=900,
        broker_port=broker.port,
        bundle=bundles["onnx-fp32"],
        key_file=public_key_file,
        rate_hz=5.0,
        readings=50,
    )
    try:
        async with backlog:
            await wait_until(backlog.drained, 90, "the backlog at the gateway's broker")
            await wait_until(
                lambda: sum(gateway.in_transit().highest_seq.values()) >= BACKLOG, 60, "the backlog queued"
            )
            await asyncio.to_thread(controller.start)
            await wait_until(lambda: stored_records(db) > 0, 30, "the drain started")
            async with late:
                started = time.monotonic()
                await wait_until(
                    lambda: _online(db, "site-a-dev-900"), 3 * REFRESH_S, "the late device online"
                )
                seen_after = time.monotonic() - started
                stored_then = stored_records(db)
            await wait_until(lambda: stored_records(db) >= BACKLOG, 120, "the backlog drained")
            drained_after = time.monotonic() - started
    finally:
        await asyncio.to_thread(controller.stop)
    print(
        f"online after {seen_after:.2f} s; {stored_then} of {BACKLOG} stored; drained {drained_after:.1f} s"
    )
    assert stored_then < BACKLOG, f"the backlog was still draining ({stored_then} of {BACKLOG} stored)"
    assert seen_after <= REFRESH_S, f"online after {seen_after:.1f} s, more than state_refresh_s"
    assert drained_after > 2 * REFRESH_S, (
        "the drain outlasted state_refresh_s: behind it, the state would be late"
    )


def _online(db: str, device: str) -> bool:
    rows = controller_rows(db, f"SELECT online FROM device WHERE id = '{device}'")
    return bool(rows and rows[0][0])
