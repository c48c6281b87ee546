"""The device's local training buffer: inputs of recent records, joined with their labels when they come.

``{data_dir}/training.sqlite``, WAL mode, written only by the agent; trainers in other processes
(a Flower ClientApp beside the agent) open it read-only (`TrainingBuffer.open_readonly`).

- Every record the running (champion) model produced keeps its raw input features (before the
  bundle's preprocessing, float32 little-endian in ``feature_names`` order), the model that
  produced it and its predicted class, under the record's own ``seq``.
- Labels arrive later on ``fleet/{site}/{device}/labels`` and are joined by ``seq``; a label for a
  seq the buffer no longer holds is counted as ``unmatched``, not an error; the last label of a
  seq wins (a correction is a new label).
- Bounded in bytes: the oldest samples go first, counted. Samples of other input features
  (a model that reads other features) cannot train the running one: they are dropped, counted.
- ``synchronous=NORMAL``: a power cut may lose the last samples or labels written; a killed
  process loses nothing committed. Losing a few training samples costs nothing that matters,
  unlike the outbox's records.
- One writer task batches samples and labels into transactions on an executor thread: the
  event loop never waits for SQLite. The counters are changed only by deltas under a lock, on
  the loop (`add`, `refused`) and on the writer's thread alike: no increment is lost.
- What waits for the writer is bounded: past `_MAX_PENDING` samples or `_MAX_PENDING_LABELS`
  labels the oldest waiting are dropped, counted (``evicted``, ``labels_dropped``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fleet_protocol import LabelBatch, ProtocolError, decode
from fleet_protocol.labels import Label

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
FILENAME = "training.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
  seq INTEGER PRIMARY KEY,
  ts REAL NOT NULL,
  model_id TEXT NOT NULL,
  model_version TEXT NOT NULL,
  features BLOB NOT NULL,
  predicted INTEGER,
  label INTEGER,
  labelled_at REAL
);
CREATE INDEX IF NOT EXISTS samples_labelled ON samples(label) WHERE label IS NOT NULL;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
#: Bytes a sample costs beside its features (row header, ts, ids, index entry): the bound is
#: on what the file holds, not only on the feature bytes.
ROW_OVERHEAD = 48
_COUNTERS = ("evicted", "labels_matched", "labels_unmatched", "labels_refused", "labels_dropped")
#: Samples waiting for the writer; past it the oldest waiting are dropped (counted as evicted).
_MAX_PENDING = 20_000
#: Labels waiting for the writer; past it the oldest waiting are dropped (``labels_dropped``).
_MAX_PENDING_LABELS = 20_000


@dataclass(slots=True)
class Samples:
    """Inputs of one micro-batch of records, as the running model saw them."""

    model_id: str
    model_version: str
    feature_names: list[str]
    ts: list[float]
    #: float32, one row per record: the native byte order, little-endian on every CPU the agent
    #: runs on (x86-64, ARM); the file's contract says little-endian.
    features: list[bytes]
    predicted: list[int | None]
    #: The source's own ground truth, when it has one: not stored here (labels come by their own
    #: path), but handed to observers such as the simulators' labeller.
    truth: list[int | None] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class BufferCounts:
    samples: int
    labelled: int
    bytes: int
    evicted: int
    labels_matched: int
    labels_unmatched: int
    labels_refused: int
    #: Labels dropped before the writer joined them (it was far behind).
    labels_dropped: int = 0


class TrainingBuffer:
    """Writer side in the agent (``open``/``add``/``add_labels``/``run_writer``); reads from anywhere."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int = 8 * 1024 * 1024,
        executor: Executor | None = None,
        readonly: bool = False,
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.readonly = readonly
        self._own_executor = executor is None and not readonly
        self._executor = executor
        if self._own_executor:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="training")
        self._conn: sqlite3.Connection | None = None
        # Serialises the one connection, whichever executor thread runs it.
        self._db_lock = asyncio.Lock() if not readonly else None
        self._pending: list[tuple[int, Samples]] = []
        self._pending_count = 0
        self._labels: list[tuple[list[Label], float]] = []
        self._labels_count = 0
        self._work = asyncio.Event() if not readonly else None
        self._counters = dict.fromkeys(_COUNTERS, 0)
        # The loop adds to the counters while the writer's thread does: only deltas, under it.
        self._counter_lock = threading.Lock()
        self._samples = 0
        self._labelled = 0
        self._bytes = 0
        self._feature_names: list[str] | None = None

    @classmethod
    def open_readonly(cls, path: Path) -> TrainingBuffer:
        """A reader for another process (a trainer): ``labelled`` and ``counts`` only, never writes."""
        return cls(path, readonly=True)

    # -- the agent's side ------------------------------------------------------------

    async def open(self) -> None:
        await self._run(self._open)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # see the module docstring: a power cut may lose the last
        conn.executescript(_SCHEMA)
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        version = int(meta.get("schema_version", SCHEMA_VERSION))
        if version > SCHEMA_VERSION:
            conn.close()
            raise RuntimeError(f"training buffer {self.path} has schema {version}, newer than this agent's")
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        with self._counter_lock:
            for key in _COUNTERS:
                self._counters[key] = int(meta.get(key, 0))
        names = meta.get("feature_names")
        self._feature_names = json.loads(names) if names else None
        self._samples, self._labelled, feature_bytes = conn.execute(
            "SELECT COUNT(*), COUNT(label), COALESCE(SUM(LENGTH(features)), 0) FROM samples"
        ).fetchone()
        self._bytes = int(feature_bytes) + ROW_OVERHEAD * self._samples
        self._conn = conn

    def add(self, first_seq: int, samples: Samples) -> None:
        """Queue the samples of records ``first_seq``, ``first_seq + 1``, ... for the writer."""
        assert self._work is not None, "a read-only buffer takes no samples"
        self._pending.append((first_seq, samples))
        self._pending_count += len(samples.ts)
        while self._pending_count > _MAX_PENDING and len(self._pending) > 1:
            # The disk is far behind: the oldest samples waiting would be evicted first anyway.
            _, dropped = self._pending.pop(0)
            self._pending_count -= len(dropped.ts)
            self._count("evicted", len(dropped.ts))
        self._work.set()

    def add_labels(self, labels: list[Label], received_at: float | None = None) -> None:
        """Queue labels (of this device: the caller checked) to be joined with their samples."""
        assert self._work is not None, "a read-only buffer takes no labels"
        self._labels.append((labels, time.time() if received_at is None else received_at))
        self._labels_count += len(labels)
        while self._labels_count > _MAX_PENDING_LABELS and len(self._labels) > 1:
            # The disk is far behind: drop the oldest labels waiting, counted.
            dropped, _ = self._labels.pop(0)
            self._labels_count -= len(dropped)
            self._count("labels_dropped", len(dropped))
        self._work.set()

    def refused(self, count: int = 1) -> None:
        """A label batch was refused (malformed, or for another device): counted, persisted with the rest."""
        self._count("labels_refused", count)

    def _count(self, key: str, delta: int) -> None:
        with self._counter_lock:
            self._counters[key] += delta

    async def run_writer(self) -> None:
        """The writer task: samples, then labels, one transaction per turn, until cancelled."""
        assert self._work is not None
        while True:
            await self._work.wait()
            self._work.clear()
            await self.flush()

    async def flush(self) -> None:
        """Write what is queued now."""
        samples, self._pending, self._pending_count = self._pending, [], 0
        labels, self._labels, self._labels_count = self._labels, [], 0
        if not samples and not labels:
            return
        try:
            # Shielded: a writer task cancelled at shutdown leaves its transaction to finish (and
            # the lock held until then), so the final flush never shares the connection with it.
            await asyncio.shield(self._run(self._write, samples, labels))
        except sqlite3.Error as exc:
            # A training buffer is a convenience: the agent goes on, the loss is counted and said.
            count = sum(len(s.ts) for _, s in samples)
            self._count("evicted", count)
            log.error(
                "training buffer write failed (%d samples, %d label batches lost): %s",
                count,
                len(labels),
                exc,
            )

    async def close(self) -> None:
        if self._conn is None:
            return
        await self.flush()
        await self._run(self._conn.close)
        self._conn = None
        if self._own_executor and self._executor is not None:
            self._executor.shutdown(wait=False)

    def _write(self, batches: list[tuple[int, Samples]], labels: list[tuple[list[Label], float]]) -> None:
        conn = self._require_conn()
        # What this write adds; the loop may count meanwhile, so it never writes back a copy.
        counters = dict.fromkeys(_COUNTERS, 0)
        names = self._feature_names
        rows: list[tuple[Any, ...]] = []
        dropped_all = False
        for first_seq, s in batches:
            if names is not None and s.feature_names != names:
                # Another model's inputs: the older samples cannot train it. Start over, counted.
                dropped_all = True
                counters["evicted"] += self._samples + len(rows)
                rows = []
            names = s.feature_names
            rows.extend(
                zip(
                    range(first_seq, first_seq + len(s.ts)),
                    s.ts,
                    [s.model_id] * len(s.ts),
                    [s.model_version] * len(s.ts),
                    s.features,
                    s.predicted,
                    strict=True,
                )
            )
        incoming = sum(len(r[4]) + ROW_OVERHEAD for r in rows)
        conn.execute("BEGIN IMMEDIATE")
        try:
            samples, labelled, size = self._samples, self._labelled, self._bytes
            if dropped_all:
                conn.execute("DELETE FROM samples")
                samples = labelled = size = 0
            if names != self._feature_names:
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('feature_names', ?)", (json.dumps(names),))
            evicted, freed, evicted_labelled = self._evict(conn, size + incoming - self.max_bytes)
            counters["evicted"] += evicted
            # A seq written again (a restarted agent that lost its outbox) replaces the old sample.
            conn.executemany(
                "INSERT OR REPLACE INTO samples (seq, ts, model_id, model_version, features, predicted)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
            samples += len(rows) - evicted
            size += incoming - freed
            labelled -= evicted_labelled
            for batch, received_at in labels:
                for label in batch:
                    held = conn.execute("SELECT label FROM samples WHERE seq = ?", (label.seq,)).fetchone()
                    if held is None:
                        counters["labels_unmatched"] += 1
                        continue
                    conn.execute(
                        "UPDATE samples SET label = ?, labelled_at = ? WHERE seq = ?",
                        (label.label, received_at, label.seq),
                    )
                    counters["labels_matched"] += 1
                    labelled += held[0] is None
            with self._counter_lock:
                # The totals with this write's deltas (and whatever the loop counted until now).
                totals = {k: self._counters[k] + counters[k] for k in _COUNTERS}
            conn.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)", [(k, str(v)) for k, v in totals.items()]
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        with self._counter_lock:
            for key, delta in counters.items():
                self._counters[key] += delta
        self._feature_names = names
        self._samples, self._labelled, self._bytes = samples, labelled, size

    @staticmethod
    def _evict(conn: sqlite3.Connection, excess: int) -> tuple[int, int, int]:
        """Delete the oldest samples until ``excess`` bytes are freed: (count, bytes, labelled among them)."""
        if excess <= 0:
            return 0, 0, 0
        count = freed = labelled = 0
        cut = None
        for seq, size, has_label in conn.execute(
            "SELECT seq, LENGTH(features), label IS NOT NULL FROM samples ORDER BY seq"
        ):
            count, freed, cut = count + 1, freed + size + ROW_OVERHEAD, seq
            labelled += has_label
            if freed >= excess:
                break
        if cut is not None:
            conn.execute("DELETE FROM samples WHERE seq <= ?", (cut,))
        return count, freed, labelled

    # -- reading (any process, any thread: a connection of its own per call) ------------

    def labelled(self, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Labelled samples, newest first: ``(x float32 (n, features), y int64 (n,))``.

        Blocking: in the agent, call it through ``asyncio.to_thread``.
        """
        with self._reader() as db:
            names = db.execute("SELECT value FROM meta WHERE key = 'feature_names'").fetchone()
            width = len(json.loads(names[0])) if names else 0
            rows = db.execute(
                "SELECT features, label FROM samples WHERE label IS NOT NULL ORDER BY seq DESC LIMIT ?",
                (-1 if limit is None else limit,),
            ).fetchall()
        x = np.frombuffer(b"".join(r[0] for r in rows), dtype="<f4").reshape(len(rows), width)
        y = np.fromiter((r[1] for r in rows), dtype=np.int64, count=len(rows))
        return x.astype(np.float32), y

    def feature_names(self) -> list[str] | None:
        with self._reader() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'feature_names'").fetchone()
        return json.loads(row[0]) if row else None

    def counts(self) -> BufferCounts:
        """What the buffer holds and what it counted, as committed (blocking, like `labelled`)."""
        with self._reader() as db:
            samples, labelled, feature_bytes = db.execute(
                "SELECT COUNT(*), COUNT(label), COALESCE(SUM(LENGTH(features)), 0) FROM samples"
            ).fetchone()
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        c = {k: int(meta.get(k, 0)) for k in _COUNTERS}
        return BufferCounts(samples, labelled, int(feature_bytes) + ROW_OVERHEAD * samples, **c)

    def live_counts(self) -> BufferCounts:
        """The writer's own running counts, without SQLite (for metrics on the event loop)."""
        with self._counter_lock:
            c = dict(self._counters)
        return BufferCounts(self._samples, self._labelled, self._bytes, **c)

    def _reader(self) -> _ReadOnly:
        return _ReadOnly(self.path)

    # -- plumbing --------------------------------------------------------------------

    def _require_conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("training buffer is not open")
        return self._conn

    async def _run(self, fn: Any, *args: Any) -> Any:
        assert self._db_lock is not None and self._executor is not None
        async with self._db_lock:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)


class _ReadOnly:
    """``with``: a read-only connection (``mode=ro``) that never writes the agent's file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None

    def __enter__(self) -> sqlite3.Connection:
        self._conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10)
        return self._conn

    def __exit__(self, *exc: object) -> None:
        assert self._conn is not None
        self._conn.close()


def parse_labels(payload: bytes, *, device_id: str, site: str) -> LabelBatch | tuple[str, str]:
    """A label message of this device's topic: the batch, or ``(reason, detail)`` why it is refused."""
    try:
        batch = decode(payload, LabelBatch)
    except ProtocolError as exc:
        return exc.reason, str(exc)
    if batch.device_id != device_id:
        return "wrong_device", f"labels for device {batch.device_id!r} on the topic of {device_id!r}"
    if batch.site != site:
        return "wrong_site", f"labels name site {batch.site!r}, this device is of {site!r}"
    return batch
