"""The two ways a stored record becomes a wire record agree, and the JSON one is a valid batch."""

from __future__ import annotations

import json

import msgpack
import numpy as np

from edge_agent.records import rows_as_bytes, to_wire, wire_json
from fleet_protocol import TelemetryBatch, decode


def _stored(n: int) -> list[tuple[int, bytes]]:
    rng = np.random.default_rng(1)
    outputs, features = rows_as_bytes(rng.normal(size=(n, 4))), rows_as_bytes(rng.normal(size=(n, 3)))
    out = []
    for i in range(n):
        regression = i % 3 == 0
        body = [
            "dev-1",
            1_800_000_000.0 + i,
            "m",
            "1.0.0",
            outputs[i],
            None if regression else i % 4,
            None if regression else 0.75,
            i == 5,
            False,
            None if i % 2 else features[i],
            {"mean": [1.0], "min": [0.0], "max": [2.0]} if i % 2 else None,
            i % 4 if i % 5 == 0 else None,
        ]
        out.append((i + 1, msgpack.packb(body, use_bin_type=True)))
    return out


def test_wire_json_is_a_valid_batch_equal_to_the_generic_encoding() -> None:
    stored = _stored(40)
    head = {"schema_version": 1, "device_id": "dev-1", "site": "site-a", "sent_at": 1.0}
    fast = decode(wire_json(head, stored), TelemetryBatch)
    generic_records = to_wire([(seq, msgpack.unpackb(body, raw=False)) for seq, body in stored])
    generic = decode(json.dumps({**head, "records": generic_records}).encode(), TelemetryBatch)
    assert len(fast.records) == 40
    for a, b in zip(fast.records, generic.records, strict=True):
        assert a.model_dump(exclude={"outputs", "features"}) == b.model_dump(exclude={"outputs", "features"})
        assert np.allclose(a.outputs, b.outputs, atol=1e-6)
        assert (a.features is None) == (b.features is None)
        if a.features is not None:
            assert np.allclose(a.features, b.features, atol=1e-6)
    assert fast.records[0].predicted is None and fast.records[1].predicted == 1, "None fields are left out"
