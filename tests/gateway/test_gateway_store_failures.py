"""Every failure path of the gateway's store goes back to what is committed; presence is never starved."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import aiomqtt
import pytest

from edge_gateway.config import load_settings
from edge_gateway.gateway import Gateway
from edge_gateway.store import Changes, GatewayStore, StoreError
from tests.gateway.factories import telemetry
from tests.utils.broker import Mosquitto
from tests.utils.waiting import wait_until


async def test_a_transaction_failing_outside_sqlite_rolls_back_and_the_next_one_commits(
    tmp_path: Path,
) -> None:
    store = GatewayStore(tmp_path / "gateway.sqlite")
    await store.open()
    # A malformed dedup entry fails in Python, after the upstream row was inserted.
    broken = Changes(upstream=[("record", b'{"lost": true}')], dedup={"dev-1": (1,)})  # type: ignore[dict-item]
    with pytest.raises(StoreError, match="store transaction failed"):
        await store.commit(broken)
    await store.commit(Changes(upstream=[("record", b'{"kept": true}')]))
    batch = await store.next_batch(100, 1 << 20)
    assert batch is not None
    assert [body for _, _, body in batch.items] == [b'{"kept": true}'], "nothing of the failed one"
    await store.close()
    with sqlite3.connect(tmp_path / "gateway.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM upstream").fetchone() == (1,)


async def test_device_states_go_up_in_every_batch_while_a_backlog_drains(tmp_path: Path) -> None:
    store = GatewayStore(tmp_path / "gateway.sqlite")
    await store.open()
    await store.commit(Changes(upstream=[("record", b'{"n": %d}' % i) for i in range(20_000)]))
    states = {f"dev-{i}": json.dumps({"device_id": f"dev-{i}"}).encode() for i in range(30)}
    await store.commit(Changes(devices=states))
    batch = await store.next_batch(2000, 4 << 20)
    assert batch is not None
    assert {device for device, _, _ in batch.devices} == set(states), "presence goes up at once"
    assert len(batch.items) + len(batch.devices) <= 2000
    assert batch.items[0][0] == 1, "the backlog still goes oldest first"
    await store.sent(batch)
    again = await store.next_batch(2000, 4 << 20)
    assert again is not None and again.devices == [], "each state change goes up once"
    # A batch of one (the search for a refused item) stays a batch of one.
    single = await store.next_batch(1, 4 << 20)
    assert single is not None and len(single.items) + len(single.devices) == 1
    await store.close()


async def test_gateway_waits_for_its_committed_state_before_taking_the_broker_redelivery(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """A commit fails, and so does the reload of what was committed: nothing may be dropped.

    Going on with the dedup window of the failed batch would take the broker's redelivery of
    those messages for duplicates, and they were never stored. SQLite's authorizer makes the
    store refuse writes to the queue and reads of the dedup table, as a failing disk would.
    """
    settings = load_settings(
        None,
        gateway_id="gw-1",
        site="site-a",
        data_dir=str(tmp_path / "gw"),
        broker={"host": "127.0.0.1", "port": broker.port},
        http={"host": "127.0.0.1", "port": 0},
        device_classes=[{"name": "all", "forward_all": True}],
    )
    gateway = Gateway(settings)
    task = asyncio.create_task(gateway.run())
    await asyncio.wait_for(gateway.started.wait(), 30)
    await wait_until(lambda: gateway.link.connected, 10, "gateway connected")
    db = gateway.store._db
    assert db is not None
    failing = {"on": True}

    def authorizer(action: int, table: str | None, *_: object) -> int:
        refused = action == sqlite3.SQLITE_INSERT and table == "upstream"
        refused |= action == sqlite3.SQLITE_READ and table == "dedup"
        return sqlite3.SQLITE_DENY if failing["on"] and refused else sqlite3.SQLITE_OK

    db.set_authorizer(authorizer)
    async with aiomqtt.Client("127.0.0.1", broker.port) as device:
        await device.publish("fleet/site-a/dev-1/telemetry", telemetry("dev-1", range(1, 51)), qos=1)
        await wait_until(lambda: gateway.metrics.store_errors._value.get() >= 1, 10, "a failed commit")
        await asyncio.sleep(2.5)  # the reload after it fails too, at least once
        assert not task.done(), "a failed reload does not end the gateway"
        failing["on"] = False
        # The broker resends whatever was not acknowledged on the next connection.
        await device.publish("fleet/site-a/dev-1/telemetry", telemetry("dev-1", range(1, 51)), qos=1)
        await wait_until(lambda: gateway.store.depth >= 50, 30, "the records stored")
    gateway.stop()
    await asyncio.wait_for(task, 30)
    with sqlite3.connect(tmp_path / "gw" / "gateway.sqlite") as conn:
        bodies = [json.loads(b) for (b,) in conn.execute("SELECT body FROM upstream WHERE kind = 'record'")]
    assert sorted(r["seq"] for r in bodies) == list(range(1, 51)), (
        "every record once, none taken for a duplicate"
    )
