"""Per-device window summaries: count, min, max, mean, std per feature and counts per class.

Windows are aligned on the records' own timestamps, so a backlog that arrives late after an
outage is summarised in the windows it was measured in. A window closes once it has ended
and no record came for it for ``grace_s``; a record that comes after that starts a further
piece of the same window (`fleet_protocol.ingest.WindowSummary` says how pieces are told apart).
The running sums are persisted with every store transaction, so a killed gateway loses none.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import msgpack
import numpy as np

from fleet_protocol import TelemetryRecord
from fleet_protocol.ingest import ClassStats, WindowSummary

Key = tuple[str, float, str, str]  # device, window start, model id, model version


@dataclass(slots=True)
class _Class:
    count: int = 0
    confidence_sum: float = 0.0
    confidence_n: int = 0
    feature_sum: np.ndarray | None = None


@dataclass(slots=True)
class WindowStats:
    window_s: float
    class_means: bool
    first_seq: int = 0
    last_seq: int = 0
    count: int = 0
    anomalies: int = 0
    low_confidence: int = 0
    forwarded: int = 0
    last_arrival: float = 0.0
    n: int = 0  # records with features
    total: np.ndarray | None = None
    squares: np.ndarray | None = None
    low: np.ndarray | None = None
    high: np.ndarray | None = None
    classes: dict[int, _Class] = field(default_factory=dict)

    def add(self, record: TelemetryRecord, forwarded: bool, now: float) -> None:
        self.first_seq = min(self.first_seq, record.seq) if self.count else record.seq
        self.last_seq = max(self.last_seq, record.seq)
        self.count += 1
        self.anomalies += record.anomaly
        self.low_confidence += record.low_confidence
        self.forwarded += forwarded
        self.last_arrival = now
        x = None
        if record.features:
            x = np.asarray(record.features, dtype=np.float64)
            if self.total is None or len(self.total) != len(x):
                # First features (or the device changed shape): start the statistics here.
                self.n, self.total, self.squares = 0, np.zeros_like(x), np.zeros_like(x)
                self.low, self.high = x.copy(), x.copy()
            assert self.squares is not None and self.low is not None and self.high is not None
            self.n += 1
            self.total += x
            self.squares += x * x
            np.minimum(self.low, x, out=self.low)
            np.maximum(self.high, x, out=self.high)
        if record.predicted is not None:
            cls = self.classes.setdefault(record.predicted, _Class())
            cls.count += 1
            if record.confidence is not None:
                cls.confidence_sum += record.confidence
                cls.confidence_n += 1
            if self.class_means and x is not None:
                cls.feature_sum = x.copy() if cls.feature_sum is None else cls.feature_sum + x

    def summary(self, key: Key, feature_names: list[str] | None) -> WindowSummary:
        device, start, model_id, version = key
        mean = std = low = high = []
        if self.n and self.total is not None and self.squares is not None:
            m = self.total / self.n
            variance = np.maximum(self.squares / self.n - m * m, 0.0)
            mean, std = _round(m), _round(np.sqrt(variance))
            low, high = _round(self.low), _round(self.high)
        names = feature_names if feature_names and len(feature_names) == len(mean) else None
        classes = [
            ClassStats(
                predicted=predicted,
                count=c.count,
                mean_confidence=round(c.confidence_sum / c.confidence_n, 6) if c.confidence_n else None,
                mean=_round(c.feature_sum / c.count) if c.feature_sum is not None else None,
            )
            for predicted, c in sorted(self.classes.items())
        ]
        return WindowSummary(
            device_id=device,
            model_id=model_id,
            model_version=version,
            window_start=start,
            window_end=start + self.window_s,
            first_seq=self.first_seq,
            last_seq=self.last_seq,
            count=self.count,
            anomalies=self.anomalies,
            low_confidence=self.low_confidence,
            forwarded=self.forwarded,
            feature_names=names,
            min=low,
            max=high,
            mean=mean,
            std=std,
            classes=classes,
        )

    def pack(self) -> bytes:
        arrays = {k: _bytes(getattr(self, k)) for k in ("total", "squares", "low", "high")}
        classes = [
            [p, c.count, c.confidence_sum, c.confidence_n, _bytes(c.feature_sum)]
            for p, c in self.classes.items()
        ]
        head = [self.window_s, self.class_means, self.first_seq, self.last_seq, self.count]
        tail = [self.anomalies, self.low_confidence, self.forwarded, self.last_arrival, self.n]
        return msgpack.packb([*head, *tail, arrays, classes], use_bin_type=True)

    @classmethod
    def unpack(cls, body: bytes) -> WindowStats:
        *scalars, arrays, classes = msgpack.unpackb(body, raw=False)
        stats = cls(*scalars)
        for name, blob in arrays.items():
            setattr(stats, name, _array(blob))
        for p, count, conf_sum, conf_n, blob in classes:
            stats.classes[p] = _Class(count, conf_sum, conf_n, _array(blob))
        return stats


class DeviceWindows:
    """Open windows of every device, and which changed since the store last saw them."""

    def __init__(self, grace_s: float = 5.0) -> None:
        self.grace_s = grace_s
        self.open: dict[Key, WindowStats] = {}
        self.changed: set[Key] = set()
        self.closed: set[Key] = set()

    def add(
        self, record: TelemetryRecord, *, window_s: float, class_means: bool, forwarded: bool, now: float
    ) -> None:
        start = math.floor(record.ts / window_s) * window_s
        key = (record.device_id, start, record.model_id, record.model_version)
        stats = self.open.get(key)
        if stats is None:
            stats = self.open[key] = WindowStats(window_s, class_means)
            self.closed.discard(key)
        stats.add(record, forwarded, now)
        self.changed.add(key)

    def close_due(self, now: float, names: dict[tuple[str, str], list[str]]) -> list[WindowSummary]:
        """Summaries of the windows that ended and went quiet; they leave the open set."""
        due = [
            key
            for key, s in self.open.items()
            if now >= max(key[1] + s.window_s, s.last_arrival) + self.grace_s
        ]
        out = []
        for key in due:
            stats = self.open.pop(key)
            out.append(stats.summary(key, names.get((key[2], key[3]))))
            self.changed.discard(key)
            self.closed.add(key)
        return out

    def take_changes(self) -> tuple[dict[str, bytes], list[str]]:
        """``(key -> packed stats, keys to delete)`` for the store."""
        upserts = {encode_key(k): self.open[k].pack() for k in self.changed}
        deletes = [encode_key(k) for k in self.closed]
        self.changed.clear()
        self.closed.clear()
        return upserts, deletes

    def load(self, key: str, body: bytes) -> None:
        self.open[decode_key(key)] = WindowStats.unpack(body)


PREFIX = "w|"


def encode_key(key: Key) -> str:
    return PREFIX + json.dumps(key)


def decode_key(text: str) -> Key:
    device, start, model_id, version = json.loads(text[len(PREFIX) :])
    return device, float(start), model_id, version


def _round(values: np.ndarray | None) -> list[float]:
    return [] if values is None else np.round(values, 6).tolist()


def _bytes(array: np.ndarray | None) -> bytes | None:
    return None if array is None else array.astype(np.float64).tobytes()


def _array(blob: bytes | None) -> np.ndarray | None:
    return None if blob is None else np.frombuffer(blob, dtype=np.float64).copy()
