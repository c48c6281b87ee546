"""The gateway's durable state: one SQLite file (WAL), written by one thread, a transaction a batch.

What one batch of MQTT messages changed goes in one transaction: the upstream queue rows,
the dedup windows, the open summary and drift windows, device states, dead letters. Only
after it committed are the messages acknowledged to the broker, so a gateway killed at any
instant resumes exactly where its store says, and the broker still holds the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_gateway.exceptions import GatewayError

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS upstream (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,          -- record | summary | drift | event | label
    body BLOB NOT NULL           -- the item's JSON, as it goes into an ingest batch
);
CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY,
    state BLOB NOT NULL,         -- the last ReportedState, JSON
    version INTEGER NOT NULL,    -- bumped on every change that must go up
    sent_version INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS dedup (device_id TEXT PRIMARY KEY, hwm INTEGER NOT NULL, bits BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS windows (key TEXT PRIMARY KEY, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    topic TEXT NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    payload BLOB NOT NULL
);
"""


class StoreError(GatewayError):
    """A transaction did not commit; ``full`` when the disk is full."""

    def __init__(self, message: str, *, full: bool = False) -> None:
        super().__init__(message)
        self.full = full


@dataclass
class Changes:
    """Everything one batch of messages (or one tick) changed."""

    upstream: list[tuple[str, bytes]] = field(default_factory=list)
    dedup: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    windows: dict[str, bytes] = field(default_factory=dict)
    windows_closed: list[str] = field(default_factory=list)
    devices: dict[str, bytes] = field(default_factory=dict)
    dead_letters: list[tuple[float, str, str, str, bytes]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return any(
            (self.upstream, self.dedup, self.windows, self.windows_closed, self.devices, self.dead_letters)
        )


@dataclass
class Snapshot:
    """What a starting gateway reloads."""

    dedup: list[tuple[str, int, bytes]]
    windows: list[tuple[str, bytes]]
    devices: dict[str, bytes]


@dataclass
class UpstreamBatch:
    first_id: int
    last_id: int
    items: list[tuple[int, str, bytes]]
    devices: list[tuple[str, int, bytes]]

    @property
    def size(self) -> int:
        return sum(len(b) for _, _, b in self.items) + sum(len(b) for _, _, b in self.devices)


class GatewayStore:
    def __init__(self, path: Path, *, dead_letters_max: int = 10_000, max_bytes: int | None = None) -> None:
        self.path = path
        self.dead_letters_max = dead_letters_max
        self.max_bytes = max_bytes
        # One thread owns the connection: SQLite work never runs on the event loop.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-store")
        self._db: sqlite3.Connection | None = None
        self.depth = 0
        self.bytes = 0
        self.has_upstream = asyncio.Event()

    async def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except sqlite3.Error as exc:  # a read, or a write outside `_transaction`
            full = getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
            raise StoreError(f"store: {exc!r}", full=full) from exc

    async def open(self) -> Snapshot:
        return await self._call(self._open)

    def _open(self) -> Snapshot:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            db = self._connect()
        except sqlite3.DatabaseError as exc:
            # Not a database any more (a disk error, not a crash: WAL survives those). Keep the
            # file for a post-mortem and start clean; the broker still holds what was not acked.
            corrupt = self.path.with_name(f"{self.path.name}.corrupt.{int(time.time())}")
            log.error("store %s is unreadable (%s): moved to %s, starting empty", self.path, exc, corrupt)
            for suffix in ("", "-wal", "-shm"):
                source = self.path.with_name(self.path.name + suffix)
                if source.exists():
                    source.replace(corrupt.with_name(corrupt.name + suffix))
            db = self._connect()
        if self.max_bytes is not None:
            # SQLite's own bound: past it, writes fail with SQLITE_FULL, as on a full disk.
            page_size = db.execute("PRAGMA page_size").fetchone()[0]
            db.execute(f"PRAGMA max_page_count = {max(1, self.max_bytes // page_size)}")
        self._db = db
        self.depth, self.bytes = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0) FROM upstream"
        ).fetchone()
        return self._snapshot()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a killed process (not a power cut): the gateway's case.
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    async def snapshot(self) -> Snapshot:
        """The state as committed: what the gateway rebuilds from after a failed transaction."""
        return await self._call(self._snapshot)

    def _snapshot(self) -> Snapshot:
        db = self._conn()
        return Snapshot(
            dedup=db.execute("SELECT device_id, hwm, bits FROM dedup").fetchall(),
            windows=db.execute("SELECT key, body FROM windows").fetchall(),
            devices=dict(db.execute("SELECT device_id, state FROM devices").fetchall()),
        )

    async def commit(self, changes: Changes) -> None:
        """Apply one batch's changes in one transaction, or raise `StoreError` and apply none."""
        if not changes:
            return
        added, size = await self._call(self._commit, changes)
        self.depth += added
        self.bytes += size
        if added or changes.devices:
            self.has_upstream.set()

    def _commit(self, c: Changes) -> tuple[int, int]:
        with self._transaction() as db:
            db.executemany("INSERT INTO upstream (kind, body) VALUES (?, ?)", c.upstream)
            db.executemany(
                "INSERT OR REPLACE INTO dedup (device_id, hwm, bits) VALUES (?, ?, ?)",
                [(d, hwm, bits) for d, (hwm, bits) in c.dedup.items()],
            )
            db.executemany("INSERT OR REPLACE INTO windows (key, body) VALUES (?, ?)", c.windows.items())
            db.executemany("DELETE FROM windows WHERE key = ?", [(k,) for k in c.windows_closed])
            db.executemany(
                "INSERT INTO devices (device_id, state, version) VALUES (?, ?, 1) ON CONFLICT (device_id)"
                " DO UPDATE SET state = excluded.state, version = devices.version + 1",
                c.devices.items(),
            )
            if c.dead_letters:
                db.executemany(
                    "INSERT INTO dead_letters (ts, topic, reason, detail, payload) VALUES (?, ?, ?, ?, ?)",
                    c.dead_letters,
                )
                self._trim_dead_letters(db)
        return len(c.upstream), sum(len(body) for _, body in c.upstream)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``; on any failure, back to what was committed."""
        db = self._conn()
        try:
            db.execute("BEGIN IMMEDIATE")
            yield db
            db.execute("COMMIT")
        except BaseException as exc:
            # Whatever failed (SQLite, a bad value, a bug), no transaction may stay open: the
            # next one would fail on BEGIN, or commit half of this one.
            _rollback(db)
            if not isinstance(exc, Exception):
                raise
            full = getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
            raise StoreError(f"store transaction failed: {exc!r}", full=full) from exc

    def _trim_dead_letters(self, db: sqlite3.Connection) -> None:
        # Bounded: a hostile publisher fills the table's budget, not the disk.
        db.execute(
            "DELETE FROM dead_letters WHERE id <= (SELECT MAX(id) FROM dead_letters) - ?",
            (self.dead_letters_max,),
        )

    async def next_batch(self, max_items: int, max_bytes: int) -> UpstreamBatch | None:
        """The oldest items (at least one, at most ``max_bytes`` of them) and the changed devices."""
        return await self._call(self._next_batch, max_items, max_bytes)

    def _next_batch(self, max_items: int, max_bytes: int) -> UpstreamBatch | None:
        db = self._conn()
        changed = db.execute(
            "SELECT device_id, version, state FROM devices WHERE version > sent_version LIMIT ?", (max_items,)
        ).fetchall()
        # Up to half the batch is kept for device states: presence must reach the controller
        # within ``state_refresh_s`` even while a backlog of hours drains behind it.
        reserved = changed[: max_items // 2]
        total = sum(len(state) for _, _, state in reserved)
        items: list[tuple[int, str, bytes]] = []
        full = False
        for row in db.execute(
            "SELECT id, kind, body FROM upstream ORDER BY id LIMIT ?", (max_items - len(reserved),)
        ):
            if (items or reserved) and total + len(row[2]) > max_bytes:
                full = True
                break
            items.append(row)
            total += len(row[2])
        devices = reserved if full else changed[: max_items - len(items)]
        if not items and not devices:
            return None
        first = items[0][0] if items else 0
        last = items[-1][0] if items else 0
        return UpstreamBatch(first, last, items, devices)

    async def sent(self, batch: UpstreamBatch) -> None:
        """The controller has the batch: its items leave the queue."""
        await self._call(self._sent, batch)
        self.depth -= len(batch.items)
        self.bytes -= sum(len(body) for _, _, body in batch.items)

    def _sent(self, batch: UpstreamBatch) -> None:
        with self._transaction() as db:
            self._remove(db, batch)

    @staticmethod
    def _remove(db: sqlite3.Connection, batch: UpstreamBatch) -> None:
        db.executemany("DELETE FROM upstream WHERE id = ?", [(i,) for i, _, _ in batch.items])
        db.executemany(
            "UPDATE devices SET sent_version = MAX(sent_version, ?) WHERE device_id = ?",
            [(version, device) for device, version, _ in batch.devices],
        )

    async def refused(self, batch: UpstreamBatch, reason: str, detail: str) -> None:
        """The controller refused these items for what they are: keep them as dead letters."""
        await self._call(self._refused, batch, reason, detail)
        self.depth -= len(batch.items)
        self.bytes -= sum(len(body) for _, _, body in batch.items)

    def _refused(self, batch: UpstreamBatch, reason: str, detail: str) -> None:
        now = time.time()
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO dead_letters (ts, topic, reason, detail, payload) VALUES (?, ?, ?, ?, ?)",
                [(now, f"upstream/{kind}", reason, detail, body) for _, kind, body in batch.items]
                + [(now, "upstream/device", reason, detail, body) for _, _, body in batch.devices],
            )
            self._remove(db, batch)
            self._trim_dead_letters(db)

    async def dead_letters(self, limit: int = 100) -> list[tuple[float, str, str, str, bytes]]:
        return await self._call(self._dead_letters, limit)

    def _dead_letters(self, limit: int) -> list[tuple[float, str, str, str, bytes]]:
        return (
            self._conn()
            .execute(
                "SELECT ts, topic, reason, detail, payload FROM dead_letters ORDER BY id DESC LIMIT ?",
                (limit,),
            )
            .fetchall()
        )

    async def close(self) -> None:
        if self._db is not None:
            await self._call(self._db.close)
            self._db = None
        self._executor.shutdown(wait=True)

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("store is not open")
        return self._db


def _rollback(db: sqlite3.Connection) -> None:
    if not db.in_transaction:
        return  # SQLite rolled back by itself (it does after SQLITE_FULL, among others)
    try:
        db.execute("ROLLBACK")
    except sqlite3.Error as exc:  # the connection is broken: nothing more to undo through it
        log.error("rollback failed: %s", exc)
