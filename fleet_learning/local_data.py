"""A node's labelled samples: the agent's training buffer (SQLite, read-only) or a ``.npz`` file.

The buffer is ``{agent data_dir}/training.sqlite``, written only by the agent (WAL). A Flower
SuperNode beside the agent opens it read-only and reads labelled rows; raw features stay on the
device: only weights trained on them leave it.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fleet_learning.exceptions import DataError

SCHEMA_VERSION = "1"


@dataclass
class LocalData:
    """Labelled raw features, oldest first; ``train``/``held_out`` split by position, deterministically."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    def split(self, every: int = 5) -> tuple[LocalData, LocalData]:
        """Every ``every``-th sample is kept for local evaluation, the rest trains."""
        mask = np.arange(len(self.y)) % every == every - 1
        return LocalData(self.x[~mask], self.y[~mask]), LocalData(self.x[mask], self.y[mask])


def read_buffer(path: Path, feature_names: list[str], *, limit: int | None = None) -> LocalData:
    """The most recent ``limit`` labelled samples of an agent's training buffer.

    Raises
    ------
    DataError
        If the file is missing or not a training buffer, or its features are not ``feature_names``.
    """
    if not path.is_file():
        raise DataError(f"training buffer {path} does not exist")
    try:
        # Read-only: the agent is the only writer; mode=ro never creates or locks it for writing.
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            rows = db.execute(
                "SELECT features, label FROM samples WHERE label IS NOT NULL ORDER BY seq DESC LIMIT ?",
                (-1 if limit is None else limit,),
            ).fetchall()
    except sqlite3.Error as exc:
        raise DataError(f"cannot read training buffer {path}: {exc}") from None
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise DataError(f"{path}: schema_version {meta.get('schema_version')!r}, expected {SCHEMA_VERSION}")
    names = json.loads(meta.get("feature_names", "null"))
    if names != feature_names:
        raise DataError(f"{path} holds features {names}, the model takes {feature_names}")
    rows.reverse()
    width = len(feature_names)
    x = np.empty((len(rows), width), np.float32)
    for i, (blob, _) in enumerate(rows):
        if len(blob) != 4 * width:
            raise DataError(f"{path}: a sample has {len(blob)} bytes of features, expected {4 * width}")
        x[i] = np.frombuffer(blob, dtype="<f4")
    return LocalData(x, np.array([label for _, label in rows], dtype=np.int64))


def read_npz(path: Path, n_features: int) -> LocalData:
    """``x`` (raw features) and ``y`` from an ``.npz`` (a simulated node's data)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            x, y = data["x"].astype(np.float32), data["y"].astype(np.int64)
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    if x.ndim != 2 or x.shape[1] != n_features or len(x) != len(y):
        raise DataError(f"{path}: x {x.shape} and y {y.shape} do not fit {n_features} features")
    return LocalData(x, y)


def read_local(path: Path, feature_names: list[str], *, limit: int | None = None) -> LocalData:
    """A buffer (``.sqlite``) or an array file (``.npz``), by suffix."""
    if path.suffix == ".npz":
        data = read_npz(path, len(feature_names))
        return data if limit is None else LocalData(data.x[-limit:], data.y[-limit:])
    return read_buffer(path, feature_names, limit=limit)


def write_buffer(path: Path, feature_names: list[str], x: np.ndarray, y: np.ndarray | None) -> Path:
    """A training buffer in the agent's schema (for simulations, tests and benchmarks; the agent
    writes its own). ``y`` None leaves every sample unlabelled."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(
            """
            CREATE TABLE IF NOT EXISTS samples (
              seq INTEGER PRIMARY KEY, ts REAL NOT NULL, model_id TEXT NOT NULL,
              model_version TEXT NOT NULL, features BLOB NOT NULL, predicted INTEGER,
              label INTEGER, labelled_at REAL);
            CREATE INDEX IF NOT EXISTS samples_labelled ON samples(label) WHERE label IS NOT NULL;
            CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            """
        )
        db.executemany(
            "INSERT OR REPLACE INTO meta VALUES (?, ?)",
            [("feature_names", json.dumps(feature_names)), ("schema_version", SCHEMA_VERSION)],
        )
        db.executemany(
            "INSERT INTO samples (ts, model_id, model_version, features, predicted, label, labelled_at)"
            " VALUES (?, 'sensor-mlp', '1.0.0', ?, NULL, ?, ?)",
            [
                (float(i), x[i].astype("<f4").tobytes(), None if y is None else int(y[i]), None)
                for i in range(len(x))
            ],
        )
    return path
