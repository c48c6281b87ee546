"""Site-wide drift summaries per model version: what a drift test needs, without raw data.

Windows run on the gateway's clock (one summary per model version and window, as the
controller keys them). Per feature: count, mean, std, and a histogram over the bins of the
drift reference that came with the model's bundle, when the gateway has that bundle; the
controller compares those with the reference's own counts.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import msgpack
import numpy as np

from fleet_protocol import DriftReference, TelemetryRecord
from fleet_protocol.ingest import DriftSummary

Key = tuple[str, str, float]  # model id, model version, window start
PREFIX = "d|"


@dataclass(slots=True)
class _Reference:
    names: list[str]
    edges: list[np.ndarray]


@dataclass(slots=True)
class DriftStats:
    count: int
    total: np.ndarray
    squares: np.ndarray
    #: Per feature counts over the reference bins; None when no reference was known at start.
    histograms: list[np.ndarray] | None

    def pack(self) -> bytes:
        hist = None if self.histograms is None else [h.tobytes() for h in self.histograms]
        return msgpack.packb([self.count, self.total.tobytes(), self.squares.tobytes(), hist])

    @classmethod
    def unpack(cls, body: bytes) -> DriftStats:
        count, total, squares, hist = msgpack.unpackb(body)
        histograms = None if hist is None else [np.frombuffer(h, dtype=np.int64).copy() for h in hist]
        return cls(
            count,
            np.frombuffer(total, dtype=np.float64).copy(),
            np.frombuffer(squares, dtype=np.float64).copy(),
            histograms,
        )


class DriftWindows:
    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self.references: dict[tuple[str, str], _Reference] = {}
        self.open: dict[Key, DriftStats] = {}
        self.changed: set[Key] = set()
        self.closed: set[Key] = set()

    def set_reference(self, model_id: str, version: str, reference: DriftReference) -> None:
        edges = [np.asarray(e, dtype=np.float64) for e in reference.bin_edges]
        self.references[(model_id, version)] = _Reference(reference.feature_names, edges)

    def feature_names(self) -> dict[tuple[str, str], list[str]]:
        return {key: ref.names for key, ref in self.references.items()}

    def add(self, records: list[TelemetryRecord], now: float, features: np.ndarray | None = None) -> None:
        """Add the features of new records (those without features are not counted).

        ``features``: `edge_gateway.summaries.feature_matrix` of ``records``, when there is one.
        """
        start = math.floor(now / self.window_s) * self.window_s
        if features is not None:
            model_id, version = records[0].model_id, records[0].model_version
            if all(r.model_id == model_id and r.model_version == version for r in records):
                arrays = {(model_id, version): features}
            else:
                indices: dict[tuple[str, str], list[int]] = {}
                for i, r in enumerate(records):
                    indices.setdefault((r.model_id, r.model_version), []).append(i)
                arrays = {m: features[idx] for m, idx in indices.items()}
        else:
            groups: dict[tuple[str, str], list[list[float]]] = {}
            for r in records:
                if r.features:
                    groups.setdefault((r.model_id, r.model_version), []).append(r.features)
            arrays = {}
            for m, rows in groups.items():
                width = len(rows[0])
                arrays[m] = np.asarray([row for row in rows if len(row) == width], dtype=np.float64)
        for (model_id, version), x in arrays.items():
            width = x.shape[1]
            key = (model_id, version, start)
            stats = self.open.get(key)
            if stats is None or len(stats.total) != width:
                stats = self.open[key] = self._new(model_id, version, width)
                self.closed.discard(key)
            stats.count += len(x)
            stats.total += x.sum(axis=0)
            stats.squares += (x * x).sum(axis=0)
            if stats.histograms is not None:
                reference = self.references[(model_id, version)]
                for i, edges in enumerate(reference.edges):
                    index = np.clip(np.searchsorted(edges, x[:, i], side="right") - 1, 0, len(edges) - 2)
                    stats.histograms[i] += np.bincount(index, minlength=len(edges) - 1)
            self.changed.add(key)

    def _new(self, model_id: str, version: str, width: int) -> DriftStats:
        reference = self.references.get((model_id, version))
        histograms = None
        if reference is not None and len(reference.edges) == width:
            histograms = [np.zeros(len(e) - 1, dtype=np.int64) for e in reference.edges]
        return DriftStats(0, np.zeros(width), np.zeros(width), histograms)

    def close_due(self, now: float) -> list[DriftSummary]:
        due = [key for key in self.open if now >= key[2] + self.window_s]
        out = []
        for key in due:
            stats = self.open.pop(key)
            model_id, version, start = key
            mean = stats.total / stats.count
            std = np.sqrt(np.maximum(stats.squares / stats.count - mean * mean, 0.0))
            reference = self.references.get((model_id, version))
            names = reference.names if reference and len(reference.names) == len(mean) else None
            out.append(
                DriftSummary(
                    model_id=model_id,
                    model_version=version,
                    window_start=start,
                    window_end=start + self.window_s,
                    count=stats.count,
                    feature_names=names or [f"x{i}" for i in range(len(mean))],
                    mean=np.round(mean, 6).tolist(),
                    std=np.round(std, 6).tolist(),
                    histograms=None if stats.histograms is None else [h.tolist() for h in stats.histograms],
                )
            )
            self.changed.discard(key)
            self.closed.add(key)
        return out

    def take_changes(self) -> tuple[dict[str, bytes], list[str]]:
        upserts = {PREFIX + json.dumps(k): self.open[k].pack() for k in self.changed}
        deletes = [PREFIX + json.dumps(k) for k in self.closed]
        self.changed.clear()
        self.closed.clear()
        return upserts, deletes

    def load(self, key: str, body: bytes) -> None:
        model_id, version, start = json.loads(key[len(PREFIX) :])
        self.open[(model_id, version, float(start))] = DriftStats.unpack(body)
