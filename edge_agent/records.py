"""How a telemetry record is laid out in the outbox, and how it becomes a wire record.

The outbox stores each record as a compact msgpack list (no keys): packing it is a few
times cheaper than a JSON object, and inference throughput depends on it. `to_wire` turns
it into the `fleet_protocol.TelemetryRecord` shape when it is sent.
"""

from __future__ import annotations

from typing import Any

FIELDS = (
    "device_id",
    "ts",
    "model_id",
    "model_version",
    "outputs",
    "predicted",
    "confidence",
    "anomaly",
    "low_confidence",
    "features",
    "feature_summary",
    "label",
)
SCHEMA_VERSION = 1


def to_wire(seq: int, values: list[Any]) -> dict[str, Any]:
    """A `TelemetryRecord`-shaped dict; absent (None) fields are left out."""
    record: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "seq": seq}
    for name, value in zip(FIELDS, values, strict=True):
        if value is not None:
            record[name] = value
    return record
