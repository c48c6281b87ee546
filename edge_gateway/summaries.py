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
from fleet_protocol.ingest import MAX_SEQ_RANGES, ClassStats, WindowSummary

Key = tuple[str, float, str, str]  # device, window start, model id, model version


@dataclass(slots=True)
class _Class:
    count: int = 0
    confidence_sum: float = 0.0
    confidence_n: int = 0
    feature_sum: np.ndarray | None = None
    #: Rows in ``feature_sum``: fewer than ``count`` once the device changed its input width.
    feature_n: int = 0


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
    #: Inclusive runs ``[first, last]`` of the seqs counted, in arrival order; None for a piece
    #: restored from a store written before runs were kept (it cannot list its seqs).
    runs: list[list[int]] | None = field(default_factory=list)

    def runs_after(self, records: list[TelemetryRecord]) -> int:
        """How many runs the piece would list with ``records`` added."""
        if self.runs is None:
            return 0
        count, last = len(self.runs), self.runs[-1][1] if self.runs else None
        first, final = records[0].seq, records[-1].seq
        if final - first == len(records) - 1 and [r.seq for r in records] == list(range(first, final + 1)):
            # One run of consecutive seqs (the usual case): it extends the last run or adds one.
            return count if last is not None and first == last + 1 else count + 1
        for record in records:
            if record.seq != (None if last is None else last + 1):
                count += 1
            last = record.seq
        return count

    def add(
        self, records: list[TelemetryRecord], forwarded: list[bool], now: float, moments: Moments | None
    ) -> None:
        """Add records of this window; ``moments`` are the sums over their features, made by `moments`."""
        seqs = [r.seq for r in records]
        low_seq, high_seq = min(seqs), max(seqs)
        self.first_seq = min(self.first_seq, low_seq) if self.count else low_seq
        self.last_seq = max(self.last_seq, high_seq)
        self.count += len(records)
        self.forwarded += sum(forwarded)
        self.last_arrival = now
        # One pass for the counts, the runs of seqs and the classes, in arrival order (so that
        # the float sums come out exactly as record by record).
        runs, classes = self.runs, self.classes
        anomalies = low_confidence = 0
        for record in records:
            if record.anomaly:
                anomalies += 1
            if record.low_confidence:
                low_confidence += 1
            if runs is not None:
                seq = record.seq
                if runs and runs[-1][1] + 1 == seq:
                    runs[-1][1] = seq
                else:
                    runs.append([seq, seq])
            predicted = record.predicted
            if predicted is not None:
                cls = classes.get(predicted)
                if cls is None:
                    cls = classes[predicted] = _Class()
                cls.count += 1
                if record.confidence is not None:
                    cls.confidence_sum += record.confidence
                    cls.confidence_n += 1
        self.anomalies += anomalies
        self.low_confidence += low_confidence
        if moments is not None:
            if self.total is not None and len(self.total) != len(moments.total):
                # The device changed input shape: the feature statistics start again from here.
                self.n, self.total = 0, None
                for cls in self.classes.values():
                    cls.feature_sum, cls.feature_n = None, 0
            if self.total is None:
                self.total, self.squares = np.zeros_like(moments.total), np.zeros_like(moments.total)
                self.low, self.high = moments.low.copy(), moments.high.copy()
            assert self.squares is not None and self.low is not None and self.high is not None
            self.n += moments.n
            self.total += moments.total
            self.squares += moments.squares
            np.minimum(self.low, moments.low, out=self.low)
            np.maximum(self.high, moments.high, out=self.high)
        if self.class_means and moments is not None:
            for record, row in zip(moments.records, moments.rows, strict=True):
                if record.predicted is not None:
                    cls = self.classes[record.predicted]
                    cls.feature_sum = row.copy() if cls.feature_sum is None else cls.feature_sum + row
                    cls.feature_n += 1

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
                mean=_round(c.feature_sum / c.feature_n)
                if c.feature_sum is not None and c.feature_n
                else None,
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
            seq_ranges=[(low, high) for low, high in self.runs] if self.runs is not None else None,
        )

    def pack(self) -> bytes:
        arrays = {k: _bytes(getattr(self, k)) for k in ("total", "squares", "low", "high")}
        classes = [
            [p, c.count, c.confidence_sum, c.confidence_n, _bytes(c.feature_sum), c.feature_n]
            for p, c in self.classes.items()
        ]
        head = [self.window_s, self.class_means, self.first_seq, self.last_seq, self.count]
        tail = [self.anomalies, self.low_confidence, self.forwarded, self.last_arrival, self.n]
        return msgpack.packb([*head, *tail, arrays, classes, self.runs], use_bin_type=True)

    @classmethod
    def unpack(cls, body: bytes) -> WindowStats:
        fields = msgpack.unpackb(body, raw=False)
        # Twelve fields: written before runs were kept; the piece goes on without them.
        runs = fields.pop() if len(fields) == 13 else None
        *scalars, arrays, classes = fields
        stats = cls(*scalars, runs=runs)
        for name, blob in arrays.items():
            setattr(stats, name, _array(blob))
        for p, count, conf_sum, conf_n, blob, *rest in classes:
            # Stored before feature_n was kept: every row of the class had features then.
            feature_n = rest[0] if rest else (count if blob is not None else 0)
            stats.classes[p] = _Class(count, conf_sum, conf_n, _array(blob), feature_n)
        return stats


@dataclass(slots=True)
class Moments:
    """Count, sums, squares, min and max per feature of a group of records, and their rows."""

    n: int
    total: np.ndarray
    squares: np.ndarray
    low: np.ndarray
    high: np.ndarray
    records: list[TelemetryRecord]
    rows: np.ndarray


def feature_matrix(records: list[TelemetryRecord]) -> np.ndarray | None:
    """The features of all ``records`` as one float64 matrix, when every one has features of one width.

    Otherwise None: `moments` and `DriftWindows.add` then sort the widths out themselves.
    """
    rows = [r.features for r in records]
    try:
        widths = set(map(len, rows))
    except TypeError:  # a record without features
        return None
    if len(widths) != 1 or 0 in widths:
        return None
    return np.asarray(rows, dtype=np.float64)


def moments_of_rows(x: np.ndarray, groups: list[tuple[list[TelemetryRecord], list[int]]]) -> list[Moments]:
    """`moments` of groups of records whose feature rows are ``x[indices]``, one width for all."""
    order = [i for _, indices in groups for i in indices]
    rows = x[order] if order != list(range(len(x))) else x
    counts = [len(indices) for _, indices in groups]
    starts = np.cumsum([0, *counts[:-1]])
    total, squares = np.add.reduceat(rows, starts), np.add.reduceat(rows * rows, starts)
    low, high = np.minimum.reduceat(rows, starts), np.maximum.reduceat(rows, starts)
    out = []
    for j, (records, _) in enumerate(groups):
        part = rows[starts[j] : starts[j] + counts[j]]
        out.append(Moments(counts[j], total[j], squares[j], low[j], high[j], records, part))
    return out


def moments(groups: list[list[TelemetryRecord]]) -> list[Moments | None]:
    """`Moments` of each group's features, for all groups in a few numpy calls (``reduceat``).

    Per group, only the records whose features have the width of its last one count. A group
    without features gets None.
    """
    out: list[Moments | None] = [None] * len(groups)
    by_width: dict[int, list[tuple[int, list[TelemetryRecord]]]] = {}
    for index, records in enumerate(groups):
        featured = [r for r in records if r.features]
        if featured:
            width = len(featured[-1].features or ())
            featured = [r for r in featured if len(r.features or ()) == width]
            by_width.setdefault(width, []).append((index, featured))
    for members in by_width.values():
        x = np.asarray([r.features for _, featured in members for r in featured], dtype=np.float64)
        counts = [len(featured) for _, featured in members]
        starts = np.cumsum([0, *counts[:-1]])
        total, squares = np.add.reduceat(x, starts), np.add.reduceat(x * x, starts)
        low, high = np.minimum.reduceat(x, starts), np.maximum.reduceat(x, starts)
        for j, (index, featured) in enumerate(members):
            rows = x[starts[j] : starts[j] + counts[j]]
            out[index] = Moments(counts[j], total[j], squares[j], low[j], high[j], featured, rows)
    return out


class DeviceWindows:
    """Open windows of every device, and which changed since the store last saw them."""

    def __init__(self, grace_s: float = 5.0) -> None:
        self.grace_s = grace_s
        self.open: dict[Key, WindowStats] = {}
        self.changed: set[Key] = set()
        self.closed: set[Key] = set()
        #: Pieces closed early (too many runs of seqs), summarised at the next `close_due`.
        self._full: list[tuple[Key, WindowStats]] = []
        #: `encode_key` of the open windows: the store names them on every change.
        self._names: dict[Key, str] = {}

    def add(
        self,
        chunks: list[tuple[list[TelemetryRecord], float, bool, list[bool]]],
        now: float,
        features: np.ndarray | None = None,
    ) -> None:
        """Add ``(records, window_s, class_means, forwarded flags)`` chunks, grouped by window first.

        ``features``: `feature_matrix` of all the chunks' records, in order, when there is one.
        """
        groups: dict[Key, tuple[list[TelemetryRecord], list[bool], float, bool, list[int]]] = {}
        floor = math.floor
        at = 0
        for records, window_s, class_means, flags in chunks:
            keys = [
                (r.device_id, floor(r.ts / window_s) * window_s, r.model_id, r.model_version) for r in records
            ]
            if keys.count(keys[0]) == len(keys):
                # A device's batch falls in one window (the usual case): one group update.
                group = groups.get(keys[0])
                if group is None:
                    group = groups[keys[0]] = ([], [], window_s, class_means, [])
                group[0].extend(records)
                group[1].extend(flags)
                group[4].extend(range(at, at + len(records)))
            else:
                for i, (key, record, forwarded) in enumerate(zip(keys, records, flags, strict=True)):
                    group = groups.get(key)
                    if group is None:
                        group = groups[key] = ([], [], window_s, class_means, [])
                    group[0].append(record)
                    group[1].append(forwarded)
                    group[4].append(at + i)
            at += len(records)
        if features is not None:
            members = [(records, indices) for records, _, _, _, indices in groups.values()]
            sums: list[Moments | None] = list(moments_of_rows(features, members))
        else:
            sums = moments([records for records, _, _, _, _ in groups.values()])
        for (key, (records, forwarded_flags, window_s, class_means, _)), m in zip(
            groups.items(), sums, strict=True
        ):
            stats = self._piece(key, window_s, class_means)
            if stats.runs_after(records) <= MAX_SEQ_RANGES:
                stats.add(records, forwarded_flags, now, m)
            else:
                # Rare (seqs arriving badly out of order): record by record, closing the piece
                # when it cannot list another run, so every summary still says which seqs it counts.
                for record, forwarded in zip(records, forwarded_flags, strict=True):
                    stats = self._piece(key, window_s, class_means)
                    if stats.runs_after([record]) > MAX_SEQ_RANGES:
                        self._full.append((key, self.open.pop(key)))
                        self.closed.add(key)
                        stats = self._piece(key, window_s, class_means)
                    stats.add([record], [forwarded], now, moments([[record]])[0])
            self.changed.add(key)

    def _piece(self, key: Key, window_s: float, class_means: bool) -> WindowStats:
        """The open piece of ``key``'s window, a new one if none is open."""
        stats = self.open.get(key)
        if stats is None:
            stats = self.open[key] = WindowStats(window_s, class_means)
            self.closed.discard(key)
        return stats

    def close_due(self, now: float, names: dict[tuple[str, str], list[str]]) -> list[WindowSummary]:
        """Summaries of the windows that ended and went quiet; they leave the open set."""
        due = [
            key
            for key, s in self.open.items()
            if now >= max(key[1] + s.window_s, s.last_arrival) + self.grace_s
        ]
        out = [stats.summary(key, names.get((key[2], key[3]))) for key, stats in self._full]
        self._full.clear()
        for key in due:
            stats = self.open.pop(key)
            out.append(stats.summary(key, names.get((key[2], key[3]))))
            self.changed.discard(key)
            self.closed.add(key)
        return out

    def take_changes(self) -> tuple[dict[str, bytes], list[str]]:
        """``(key -> packed stats, keys to delete)`` for the store."""
        names = self._names
        upserts = {}
        for k in self.changed:
            name = names.get(k)
            if name is None:
                name = names[k] = encode_key(k)
            upserts[name] = self.open[k].pack()
        deletes = [names.pop(k, None) or encode_key(k) for k in self.closed]
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
    return None if array is None else np.asarray(array, dtype=np.float64).tobytes()


def _array(blob: bytes | None) -> np.ndarray | None:
    return None if blob is None else np.frombuffer(blob, dtype=np.float64).copy()
