"""The durable outbox: every record waits here, in SQLite, until the broker acknowledged it.

- One writer task batches records into transactions, off the event loop (an executor
  thread), in WAL mode: a killed process loses nothing that was committed.
- ``seq`` is assigned inside the insert transaction and persisted with it, so it only grows,
  across restarts too. The source's cursor is saved in the same transaction, so a restarted
  agent neither skips nor repeats a reading.
- Bounded in bytes. When full, the oldest routine records go first, flagged records
  (anomalies, low confidence) only when nothing routine is left; every eviction is counted.
- A full disk (``SQLITE_FULL``) evicts harder; a batch that still does not fit is dropped
  and counted, and the agent goes on.
- Any other write error is retried when it is transient (``SQLITE_BUSY``/``SQLITE_LOCKED`` a
  few times, ``SQLITE_IOERR`` once); otherwise the batch is dropped, counted in
  ``dropped_write_error`` with the error kept in ``last_error``, for the agent to report.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    flagged INTEGER NOT NULL,
    size INTEGER NOT NULL,
    body BLOB NOT NULL
);
-- No index on flagged: eviction is rare and scans from the oldest seq anyway, while an
-- index would be updated on every insert and delete (it cost half the insert time).
DROP INDEX IF EXISTS outbox_by_priority;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value);
"""
_COUNTERS = ("last_seq", "evicted_routine", "evicted_flagged", "dropped_disk_full", "dropped_write_error")
#: Tries of one transaction while another process holds the database (each after SQLite's own
#: busy timeout), and the pause between them.
_BUSY_TRIES = 4
_BUSY_PAUSE_S = 0.05


@dataclass(slots=True)
class PendingRecord:
    """A record waiting for the writer; ``body`` is stored as msgpack, under the next ``seq``."""

    body: Any
    flagged: bool
    cursor: str | None = None


@dataclass(slots=True)
class PackedRecords:
    """Records already packed by the caller: msgpack bodies, their flags, the cursor after the last.

    The agent's inference path builds these a micro-batch at a time: no object per record.
    """

    bodies: list[bytes]
    flagged: list[bool]
    cursor: str | None = None


@dataclass(frozen=True, slots=True)
class OutboxRow:
    seq: int
    body: bytes

    def value(self) -> Any:
        """The stored body, as it was put."""
        return msgpack.unpackb(self.body, raw=False)


@dataclass(frozen=True, slots=True)
class OutboxStats:
    depth: int
    bytes: int
    last_seq: int
    evicted_routine: int
    evicted_flagged: int
    dropped_disk_full: int
    dropped_write_error: int
    pending: int
    #: The last write error that lost records, for the device's reported state.
    last_error: str | None


class Outbox:
    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int = 256 * 1024 * 1024,
        max_pending: int = 10_000,
        synchronous: str = "NORMAL",
        executor: Executor | None = None,
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.max_pending = max_pending
        self._synchronous = synchronous
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        self._conn: sqlite3.Connection | None = None
        # Serialises use of the writing connection, whichever executor thread runs it.
        self._db_lock = asyncio.Lock()
        # The sync reads through a connection of its own (`read_after`).
        self._reader: sqlite3.Connection | None = None
        self._pending: list[PackedRecords] = []
        self._pending_count = 0
        self._writing = 0
        self._changed = asyncio.Condition()
        self._new_records = asyncio.Event()
        self._depth = 0
        self._bytes = 0
        self._counters = dict.fromkeys(_COUNTERS, 0)
        self.saved_cursor: str | None = None
        self.last_error: str | None = None
        self._drops = 0
        #: Called on the loop with ``(first seq, part)`` of each part a transaction committed:
        #: how the agent learns the seqs its records got (its training buffer keys samples by them).
        self.on_stored: Callable[[list[tuple[int, PackedRecords]]], None] | None = None

    @property
    def executor(self) -> Executor:
        """The thread the writes run on (shared, or the outbox's own, shut down by `close`)."""
        return self._executor

    # -- lifecycle -------------------------------------------------------------------

    async def open(self) -> None:
        await self._run(self._open)
        if self._depth:
            self._new_records.set()

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        conn.executescript(_SCHEMA)
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        version = int(meta.get("schema_version", SCHEMA_VERSION))
        if version > SCHEMA_VERSION:
            conn.close()
            raise RuntimeError(f"outbox {self.path} has schema {version}, newer than this agent's")
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
        depth, size, max_seq = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0), COALESCE(MAX(seq), 0) FROM outbox"
        ).fetchone()
        for key in _COUNTERS:
            self._counters[key] = int(meta.get(key, 0))
        # Never trust one source alone: seq must not repeat even if meta were behind.
        self._counters["last_seq"] = max(self._counters["last_seq"], int(max_seq))
        self.saved_cursor = meta.get("source_cursor")
        self._depth, self._bytes = int(depth), int(size)
        self._conn = conn
        # A reader waits for a lock only in rare cases (WAL recovery): never long, as a daemon's
        # reads are on its loop.
        reader = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=1.0)
        reader.execute("PRAGMA query_only=1")
        self._reader = reader

    async def close(self) -> None:
        """Write what is pending, then close the database."""
        if self._conn is None:
            return
        await self.flush()
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        await self._run(self._conn.close)
        self._conn = None
        if self._own_executor:
            self._executor.shutdown(wait=False)

    # -- writing ---------------------------------------------------------------------

    async def put(self, records: Iterable[PendingRecord]) -> None:
        """Queue records for the writer. Waits while ``max_pending`` are queued: never drops."""
        items = list(records)
        cursor = next((r.cursor for r in reversed(items) if r.cursor is not None), None)
        # msgpack: several times cheaper than JSON to write, and the sync re-encodes anyway.
        bodies = [msgpack.packb(r.body, use_bin_type=True) for r in items]
        await self.put_packed(PackedRecords(bodies, [r.flagged for r in items], cursor))

    async def put_packed(self, records: PackedRecords) -> None:
        """Queue packed records for the writer. Waits while ``max_pending`` are queued: never drops."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._pending_count < self.max_pending)
            self._pending.append(records)
            self._pending_count += len(records.bodies)
            self._changed.notify_all()

    async def run_writer(self) -> None:
        """The writer task: drain the pending list into transactions until cancelled."""
        while True:
            async with self._changed:
                await self._changed.wait_for(lambda: bool(self._pending))
                batch, self._pending, self._pending_count = self._pending, [], 0
                self._writing += 1
                self._changed.notify_all()
            try:
                self._stored(await self._run(self._write, batch))
            except Exception as exc:  # not SQLite's (those `_write` handles): still counted, never silent
                count = sum(len(b.bodies) for b in batch)
                log.exception("outbox write of %d records failed", count)
                self._dropped(count, f"{exc.__class__.__name__}: {exc}")
            finally:
                async with self._changed:
                    self._writing -= 1
                    self._changed.notify_all()
            self._new_records.set()

    async def flush(self) -> None:
        """Return once every record put so far is committed (or counted as dropped)."""
        async with self._changed:
            batch, self._pending, self._pending_count = self._pending, [], 0
            self._writing += 1
        try:
            if batch:
                self._stored(await self._run(self._write, batch))
                self._new_records.set()
        finally:
            async with self._changed:
                self._writing -= 1
                self._changed.notify_all()
                await self._changed.wait_for(lambda: not self._pending and self._writing == 0)

    def _stored(self, parts: list[tuple[int, PackedRecords]]) -> None:
        if parts and self.on_stored is not None:
            try:
                self.on_stored(parts)
            except Exception:  # an observer's bug must not count committed records as lost
                log.exception("outbox: the on_stored observer failed")

    def _write(self, batch: list[PackedRecords]) -> list[tuple[int, PackedRecords]]:
        """Commit the batch; returns each part with its first seq (nothing when it was dropped)."""
        seq = self._counters["last_seq"]
        rows: list[tuple[int, int, int, bytes]] = []
        starts: list[tuple[int, PackedRecords]] = []
        cursor = None
        for part in batch:
            starts.append((seq + 1, part))
            rows.extend(
                zip(
                    range(seq + 1, seq + 1 + len(part.bodies)),
                    map(int, part.flagged),
                    map(len, part.bodies),
                    part.bodies,
                    strict=True,
                )
            )
            seq += len(part.bodies)
            if part.cursor is not None:
                cursor = part.cursor
        incoming = sum(r[2] for r in rows)
        try:
            self._insert_retrying(rows, incoming, seq, cursor)
            return starts
        except sqlite3.Error as exc:
            if _primary_code(exc) != sqlite3.SQLITE_FULL:
                self._dropped(len(rows), f"{exc.__class__.__name__}: {exc}")
                return []
        # The disk (or the database's page limit) is full: make room and try once more.
        log.warning("outbox disk is full; evicting routine records to make room")
        with contextlib.suppress(sqlite3.Error):
            self._shrink(max(incoming * 4, self._bytes // 4))
        try:
            self._insert_retrying(rows, incoming, seq, cursor)
            return starts
        except sqlite3.Error as again:
            if _primary_code(again) != sqlite3.SQLITE_FULL:
                self._dropped(len(rows), f"{again.__class__.__name__}: {again}")
                return []
            self._counters["dropped_disk_full"] += len(rows)
            log.error("outbox disk is full: dropped %d records (counted)", len(rows))
            return []

    def _insert_retrying(
        self, rows: list[tuple[int, int, int, bytes]], incoming: int, seq: int, cursor: str | None
    ) -> None:
        """`_insert`, tried again on errors that pass: a lock held elsewhere, one I/O error."""
        for attempt in range(_BUSY_TRIES):
            try:
                self._insert(rows, incoming, seq, cursor)
                return
            except sqlite3.Error as exc:
                code = _primary_code(exc)
                busy = code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) and attempt < _BUSY_TRIES - 1
                if not (busy or (code == sqlite3.SQLITE_IOERR and attempt == 0)):
                    raise
                log.warning("outbox write: %s; trying again", exc)
                time.sleep(_BUSY_PAUSE_S * (attempt + 1))  # an executor thread: the loop runs on

    def _dropped(self, count: int, error: str) -> None:
        """Count records lost to a write error; the next good transaction persists the count."""
        self._counters["dropped_write_error"] += count
        self.last_error = error
        self._drops += 1
        if self._drops & (self._drops - 1) == 0:  # once per doubling: a broken disk must not fill the log
            log.error(
                "outbox write failed, %d records dropped (counted; failure %d): %s", count, self._drops, error
            )

    def _insert(
        self, rows: list[tuple[int, int, int, bytes]], incoming: int, seq: int, cursor: str | None
    ) -> None:
        conn = self._require_conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            evicted = self._evict(conn, self._bytes + incoming - self.max_bytes)
            conn.executemany("INSERT INTO outbox VALUES (?, ?, ?, ?)", rows)
            counters = dict(self._counters)
            counters["last_seq"] = seq
            counters["evicted_routine"] += evicted[0][0]
            counters["evicted_flagged"] += evicted[1][0]
            meta = list(counters.items())
            if cursor is not None:
                meta.append(("source_cursor", cursor))
            conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", meta)
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise
        self._counters = counters
        if cursor is not None:
            self.saved_cursor = cursor
        self._depth += len(rows) - evicted[0][0] - evicted[1][0]
        self._bytes += incoming - evicted[0][1] - evicted[1][1]

    def _evict(self, conn: sqlite3.Connection, excess: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """Delete the oldest routine, then flagged, rows until ``excess`` bytes are freed."""
        done = []
        for flagged in (0, 1):
            count = freed = 0
            if excess > 0:
                cut = None
                for seq, size in conn.execute(
                    "SELECT seq, size FROM outbox WHERE flagged = ? ORDER BY seq", (flagged,)
                ):
                    count, freed, cut = count + 1, freed + size, seq
                    if freed >= excess:
                        break
                if cut is not None:
                    conn.execute("DELETE FROM outbox WHERE flagged = ? AND seq <= ?", (flagged, cut))
                excess -= freed
            done.append((count, freed))
        if done[0][0] or done[1][0]:
            log.warning("outbox full: evicted %d routine and %d flagged records", done[0][0], done[1][0])
        return done[0], done[1]

    def _shrink(self, target_free: int) -> None:
        conn = self._require_conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            routine, flagged = self._evict(conn, target_free)
            counters = dict(self._counters)
            counters["evicted_routine"] += routine[0]
            counters["evicted_flagged"] += flagged[0]
            conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(counters.items()))
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise
        self._counters = counters
        self._depth -= routine[0] + flagged[0]
        self._bytes -= routine[1] + flagged[1]

    # -- reading and acknowledging ------------------------------------------------------

    async def read_after(self, seq: int, *, limit: int, max_bytes: int) -> list[OutboxRow]:
        """The oldest stored records with a ``seq`` above ``seq``, at most ``limit`` / ``max_bytes``.

        Through a connection of its own: WAL lets it read while the writer's connection inserts,
        deletes or checkpoints, so it never waits for them. A daemon reads on the loop: a batch of
        rows just written (in the page cache) reads in about 0.1 ms, less than encoding them, which
        is on the loop too; handed to a thread, as it was, each read waited for the GIL behind the
        loop's own work and the outbox thread's, and a draining backlog spent most of its time
        there (bench/agent.py ``agent_sync_records_per_s``: 20-37k records/s before, 59-82k after).
        Agents that share an executor (a simulated fleet: hundreds on one loop) read in it, where
        SQLite's own work runs beside the loop.
        """
        # What this read sees needs no wake-up: `wait_for_records` waits for what comes after it.
        self._new_records.clear()
        if self._own_executor:
            return self._read_after(seq, limit, max_bytes)
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, self._read_after, seq, limit, max_bytes
        )

    def _read_after(self, seq: int, limit: int, max_bytes: int) -> list[OutboxRow]:
        out: list[OutboxRow] = []
        total = 0
        if self._reader is None:
            raise RuntimeError("outbox is not open")
        cursor = self._reader.execute(
            "SELECT seq, body FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)
        )
        for row_seq, body in cursor:
            if out and total + len(body) > max_bytes:
                break
            out.append(OutboxRow(row_seq, body))
            total += len(body)
        return out

    async def ack(self, seqs: list[int]) -> None:
        """The broker has these records: delete them.

        A delete that fails loses nothing: the records stay and go again after the next
        reconnect, and downstream stores each ``(device_id, seq)`` once.
        """
        try:
            await self._run(self._ack, seqs)
        except sqlite3.Error as exc:
            log.error(
                "outbox: could not delete %d acknowledged records (%s); they will be resent", len(seqs), exc
            )

    def _ack(self, seqs: list[int]) -> None:
        conn = self._require_conn()
        freed = removed = 0
        conn.execute("BEGIN IMMEDIATE")
        try:
            for start in range(0, len(seqs), 500):
                chunk = seqs[start : start + 500]
                marks = ",".join("?" * len(chunk))
                sql = f"DELETE FROM outbox WHERE seq IN ({marks}) RETURNING size"
                for (size,) in conn.execute(sql, chunk):
                    removed += 1
                    freed += size
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise
        self._depth -= removed
        self._bytes -= freed

    async def wait_for_records(self) -> None:
        """Return when records may have been added since the last call or the last `read_after`."""
        await self._new_records.wait()
        self._new_records.clear()

    async def set_disk_limit(self, max_bytes: int | None) -> None:
        """Make the database file unable to grow past ``max_bytes`` (None: no limit).

        SQLite then fails writes with ``SQLITE_FULL``, exactly as on a full disk: how the
        simulators make a device's disk full without filling the real one.
        """
        conn = self._require_conn()
        if max_bytes is None:
            pages = 1_073_741_823  # SQLite's default maximum
        else:
            page_size = (await self._run(conn.execute, "PRAGMA page_size")).fetchone()[0]
            used = (await self._run(conn.execute, "PRAGMA page_count")).fetchone()[0]
            pages = max(used, max_bytes // page_size)
        await self._run(conn.execute, f"PRAGMA max_page_count = {int(pages)}")

    # -- state -------------------------------------------------------------------------

    @property
    def stats(self) -> OutboxStats:
        c = self._counters
        return OutboxStats(
            depth=self._depth,
            bytes=self._bytes,
            last_seq=c["last_seq"],
            evicted_routine=c["evicted_routine"],
            evicted_flagged=c["evicted_flagged"],
            dropped_disk_full=c["dropped_disk_full"],
            dropped_write_error=c["dropped_write_error"],
            pending=self._pending_count,
            last_error=self.last_error,
        )

    def _require_conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("outbox is not open")
        return self._conn

    async def _run(self, fn: Any, *args: Any) -> Any:
        async with self._db_lock:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)


def _primary_code(exc: sqlite3.Error) -> int | None:
    """SQLite's primary result code (``SQLITE_IOERR_WRITE`` is an ``SQLITE_IOERR``)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


def _rollback(conn: sqlite3.Connection) -> None:
    # SQLite has already rolled back by itself after some errors (SQLITE_FULL among them).
    if not conn.in_transaction:
        return
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error as exc:  # the connection is broken; the original error is what to report
        log.error("outbox rollback failed: %s", exc)
