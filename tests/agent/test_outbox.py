"""The outbox on a real SQLite file: seq, bounds, eviction order, a full disk, reopening."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from edge_agent.outbox import Outbox, PendingRecord


def _records(n: int, *, flagged: bool = False, start_cursor: int = 0, size: int = 100) -> list[PendingRecord]:
    return [
        PendingRecord(body={"pad": "x" * size, "i": i}, flagged=flagged, cursor=str(start_cursor + i + 1))
        for i in range(n)
    ]


async def _open(path: Path, **kwargs: object) -> Outbox:
    outbox = Outbox(path, **kwargs)  # type: ignore[arg-type]
    await outbox.open()
    return outbox


async def _all_seqs(outbox: Outbox) -> list[int]:
    return [r.seq for r in await outbox.read_after(0, limit=1_000_000, max_bytes=1 << 40)]


async def test_seq_only_grows_across_reopen_and_acks(tmp_path: Path) -> None:
    outbox = await _open(tmp_path / "o.sqlite")
    await outbox.put(_records(5))
    await outbox.flush()
    assert await _all_seqs(outbox) == [1, 2, 3, 4, 5]
    await outbox.ack([1, 2, 3, 4, 5])
    await outbox.close()

    reopened = await _open(tmp_path / "o.sqlite")
    await reopened.put(_records(2))
    await reopened.flush()
    assert await _all_seqs(reopened) == [6, 7]
    assert reopened.stats.last_seq == 7
    await reopened.close()


async def test_records_carry_their_seq_and_the_cursor_is_saved_with_them(tmp_path: Path) -> None:
    outbox = await _open(tmp_path / "o.sqlite")
    await outbox.put(_records(3, start_cursor=40))
    await outbox.flush()
    rows = await outbox.read_after(0, limit=10, max_bytes=1 << 20)
    assert [r.seq for r in rows] == [1, 2, 3]
    assert [r.value()["i"] for r in rows] == [0, 1, 2]
    await outbox.close()
    assert (await _open(tmp_path / "o.sqlite")).saved_cursor == "43"


async def test_writer_task_batches_concurrent_puts(tmp_path: Path) -> None:
    outbox = await _open(tmp_path / "o.sqlite")
    writer = asyncio.create_task(outbox.run_writer())
    await asyncio.gather(*(outbox.put(_records(10)) for _ in range(20)))
    await outbox.flush()
    assert await _all_seqs(outbox) == list(range(1, 201))
    writer.cancel()
    await outbox.close()


async def test_put_waits_instead_of_dropping_when_pending_is_full(tmp_path: Path) -> None:
    outbox = await _open(tmp_path / "o.sqlite", max_pending=10)
    await outbox.put(_records(10))
    blocked = asyncio.create_task(outbox.put(_records(1)))
    await asyncio.sleep(0.05)
    assert not blocked.done()
    writer = asyncio.create_task(outbox.run_writer())
    await asyncio.wait_for(blocked, 5)
    await outbox.flush()
    assert outbox.stats.depth == 11
    writer.cancel()
    await outbox.close()


async def test_bound_evicts_oldest_routine_records_before_flagged_ones(tmp_path: Path) -> None:
    outbox = await _open(tmp_path / "o.sqlite", max_bytes=64 * 1024)
    await outbox.put(_records(20, flagged=True, size=1000))  # seq 1..20, about 20 KB
    await outbox.flush()
    for _ in range(10):  # 100 routine records of about 1 KB: more than the bound allows
        await outbox.put(_records(10, size=1000))
        await outbox.flush()
    stats = outbox.stats
    assert stats.bytes <= 64 * 1024
    assert stats.evicted_routine > 0
    assert stats.evicted_flagged == 0
    seqs = await _all_seqs(outbox)
    assert seqs[:20] == list(range(1, 21)), "every flagged record survives while routine ones remain"
    assert seqs[20:] == list(range(121 - len(seqs) + 20, 121)), "the newest routine records are kept"
    await outbox.close()


async def test_bound_evicts_flagged_records_only_when_nothing_routine_is_left(tmp_path: Path) -> None:
    outbox = await _open(tmp_path / "o.sqlite", max_bytes=64 * 1024)
    for _ in range(12):
        await outbox.put(_records(10, flagged=True, size=1000))
        await outbox.flush()
    stats = outbox.stats
    assert stats.evicted_flagged > 0 and stats.evicted_routine == 0
    assert stats.bytes <= 64 * 1024
    assert (await _all_seqs(outbox))[-1] == 120
    await outbox.close()


async def test_eviction_counters_survive_restart(tmp_path: Path) -> None:
    outbox = await _open(tmp_path / "o.sqlite", max_bytes=64 * 1024)
    for _ in range(10):
        await outbox.put(_records(10, size=1000))
        await outbox.flush()
    evicted = outbox.stats.evicted_routine
    assert evicted > 0
    await outbox.close()
    assert (await _open(tmp_path / "o.sqlite")).stats.evicted_routine == evicted


async def test_full_disk_drops_and_counts_records_and_recovers(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    outbox = await _open(path)
    # A page limit is SQLite's own "disk full" (SQLITE_FULL), without filling the real disk.
    assert outbox._conn is not None
    page_count = outbox._conn.execute("PRAGMA page_count").fetchone()[0]
    outbox._conn.execute(f"PRAGMA max_page_count = {page_count + 8}")
    await outbox.put(_records(400, size=1000))
    await outbox.flush()
    stats = outbox.stats
    assert stats.dropped_disk_full == 400
    assert stats.depth == 0
    await outbox.put(_records(2, size=10))  # small enough to fit: the outbox still works
    await outbox.flush()
    assert outbox.stats.depth == 2
    await outbox.close()


async def test_ack_removes_only_the_acknowledged_records(tmp_path: Path) -> None:
    outbox = await _open(tmp_path / "o.sqlite")
    await outbox.put(_records(10))
    await outbox.flush()
    await outbox.ack([2, 4, 6, 99])
    assert await _all_seqs(outbox) == [1, 3, 5, 7, 8, 9, 10]
    assert outbox.stats.depth == 7
    rows = await outbox.read_after(3, limit=2, max_bytes=1 << 20)
    assert [r.seq for r in rows] == [5, 7]
    await outbox.close()


async def test_newer_outbox_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    (await _open(path)).__class__  # noqa: B018 - create the file
    conn = sqlite3.connect(path)
    conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', 99)")
    conn.commit()
    conn.close()
    with pytest.raises(RuntimeError, match="schema 99, newer than this agent's"):
        await _open(path)


async def test_a_write_waits_out_another_process_holding_the_database(tmp_path: Path) -> None:
    """SQLITE_BUSY is transient: the batch is tried again, nothing is lost or counted as lost."""
    path = tmp_path / "o.sqlite"
    outbox = await _open(path)
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # longer than SQLite's 5 s busy timeout
    release = asyncio.get_running_loop().call_later(6.0, holder.execute, "ROLLBACK")
    try:
        await outbox.put(_records(10))
        await outbox.flush()
    finally:
        release.cancel()
        if holder.in_transaction:
            holder.execute("ROLLBACK")
        holder.close()
    assert await _all_seqs(outbox) == list(range(1, 11))
    assert outbox.stats.dropped_write_error == 0
    await outbox.close()


async def test_records_lost_to_a_write_error_are_counted_and_the_count_survives(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    outbox = await _open(path)
    conn = outbox._conn
    assert conn is not None
    # A database that refuses writes (SQLITE_READONLY): not transient, not a full disk.
    await outbox._run(conn.execute, "PRAGMA query_only = ON")
    await outbox.put(_records(7))
    await outbox.flush()
    assert outbox.stats.dropped_write_error == 7
    assert outbox.stats.last_error is not None and "readonly" in outbox.stats.last_error
    assert await _all_seqs(outbox) == []
    await outbox._run(conn.execute, "PRAGMA query_only = OFF")
    await outbox.put(_records(2))
    await outbox.flush()
    assert await _all_seqs(outbox) == [1, 2], "the lost records never took a seq"
    await outbox.close()
    reopened = await _open(path)
    assert reopened.stats.dropped_write_error == 7, "persisted with the next good transaction"
    await reopened.close()


@pytest.mark.parametrize(("failures", "stored"), [(1, True), (2, False)])
async def test_one_io_error_is_tried_again_and_a_second_drops_the_batch_counted(
    tmp_path: Path, failures: int, stored: bool
) -> None:
    """SQLITE_IOERR may pass (a flaky card, a bus reset): once is tried again, twice is a loss, counted.

    The error is injected before the real write: a failing disk cannot be had on demand here.
    """
    outbox = await _open(tmp_path / "o.sqlite")
    real, calls = outbox._insert, []

    def flaky(*args: object) -> None:
        calls.append(1)
        if len(calls) <= failures:
            error = sqlite3.OperationalError("disk I/O error")
            error.sqlite_errorcode = sqlite3.SQLITE_IOERR_WRITE  # type: ignore[attr-defined]
            raise error
        real(*args)  # type: ignore[arg-type]

    outbox._insert = flaky  # type: ignore[method-assign]
    await outbox.put(_records(5))
    await outbox.flush()
    assert len(calls) == 2, "tried once more, never more than once"
    if stored:
        assert await _all_seqs(outbox) == [1, 2, 3, 4, 5]
        assert outbox.stats.dropped_write_error == 0
    else:
        assert await _all_seqs(outbox) == []
        assert outbox.stats.dropped_write_error == 5
        assert outbox.stats.last_error is not None and "disk I/O error" in outbox.stats.last_error
    await outbox.close()
