"""The gateway's per-batch fast paths answer exactly as their record-by-record counterparts."""

from __future__ import annotations

import random

import numpy as np

from edge_gateway.config import DeviceClass
from edge_gateway.dedup import DedupWindow
from edge_gateway.filters import Reducer
from edge_gateway.summaries import DeviceWindows, feature_matrix
from fleet_protocol import TelemetryRecord
from tests.gateway.factories import record

T0 = 1_800_000_000.0


def _seq_batches(rng: random.Random, count: int) -> list[list[int]]:
    """Runs above the highest seq, resends, gaps, shuffles and seqs far below the window."""
    batches, top = [], 0
    for _ in range(count):
        kind, n = rng.random(), rng.randint(1, 8)
        if kind < 0.5:
            seqs = list(range(top + 1, top + 1 + n))
        elif kind < 0.65:
            seqs = list(range(max(1, top - n), top + 1))  # a resend after a lost PUBACK
        elif kind < 0.8:
            seqs = rng.sample(range(max(1, top - 40), top + 20), n)  # out of order, with gaps
        elif kind < 0.9:
            seqs = list(range(top + 100, top + 100 + n))  # a jump past the window
        else:
            seqs = [max(1, top - 200 + i) for i in range(n)]  # older than the window: stale
        top = max(top, *seqs)
        batches.append(seqs)
    return batches


def test_check_many_answers_as_check_seq_by_seq() -> None:
    batches = _seq_batches(random.Random(7), 400)
    one_by_one, many = DedupWindow(size=64), DedupWindow(size=64)

    answers = [[one_by_one.check("dev-1", s) for s in seqs] for seqs in batches]
    answers_many = [many.check_many("dev-1", seqs) for seqs in batches]

    assert answers_many == answers
    assert many.export("dev-1") == one_by_one.export("dev-1")
    assert many.stale == one_by_one.stale > 0
    assert many.take_dirty() == one_by_one.take_dirty()


def _records(rng: np.random.Generator, device: str, seqs: range) -> list[TelemetryRecord]:
    return [
        record(
            device,
            s,
            features=rng.normal(0.0, 1.0, 2).round(2).tolist(),
            predicted=int(rng.integers(0, 3)),
            anomaly=bool(rng.random() < 0.1),
            low_confidence=bool(rng.random() < 0.1),
        )
        for s in seqs
    ]


def test_forward_many_answers_as_forward_record_by_record() -> None:
    classes = [
        DeviceClass(name="plain"),
        DeviceClass(name="all", forward_all=True),
        DeviceClass(name="sampled", sample_rate=0.3),
        DeviceClass(name="deadband", deadband=0.8),
        DeviceClass(name="changes", on_class_change=True),
    ]
    rng = np.random.default_rng(3)
    batches = [_records(rng, "dev-1", range(start, start + 5)) for start in range(1, 200, 5)]
    for cls in classes:
        one_by_one, many = Reducer([cls]), Reducer([cls])

        flags = [[one_by_one.forward(cls, r) for r in batch] for batch in batches]
        flags_many = [many.forward_many(cls, batch) for batch in batches]

        assert flags_many == flags, cls.name
        # The per-device memory is the same too: a class-change reducer decides alike after.
        after = _records(rng, "dev-1", range(500, 505))
        probe = DeviceClass(name="probe", on_class_change=True, deadband=0.8)
        assert many.forward_many(probe, after) == [one_by_one.forward(probe, r) for r in after], cls.name


def test_window_sums_from_the_shared_features_matrix_match_the_per_group_path() -> None:
    rng = np.random.default_rng(5)
    chunks = []
    for i, device in enumerate(["dev-1", "dev-2", "dev-1", "dev-3", "dev-2"]):
        # Timestamps across a window boundary in some chunks; class means in one device's class.
        records = [
            record(device, 10 * i + k + 1, ts=T0 + 55 + 3 * k, features=rng.normal(0, 1, 4).tolist())
            for k in range(4)
        ]
        chunks.append((records, 60.0, device == "dev-2", [k == 0 for k in range(4)]))
    everything = [r for records, _, _, _ in chunks for r in records]
    shared, per_group = DeviceWindows(), DeviceWindows()

    shared.add(chunks, T0 + 70, feature_matrix(everything))
    per_group.add(chunks, T0 + 70)

    assert feature_matrix(everything) is not None
    assert shared.take_changes() == per_group.take_changes()


def test_feature_matrix_is_none_unless_every_record_has_features_of_one_width() -> None:
    two = record("dev-1", 1, features=[1.0, 2.0])

    assert feature_matrix([two, record("dev-1", 2, features=[1.0, 2.0, 3.0])]) is None
    assert feature_matrix([two, record("dev-1", 3, features=None)]) is None
    assert feature_matrix([record("dev-1", 4, features=[])]) is None
    assert feature_matrix([two, two]).tolist() == [[1.0, 2.0], [1.0, 2.0]]  # type: ignore[union-attr]
