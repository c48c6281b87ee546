"""Payloads for gateway tests."""

from __future__ import annotations

import json
import time
from typing import Any

from fleet_protocol import TelemetryRecord


def record(device: str, seq: int, **fields: Any) -> TelemetryRecord:
    values: dict[str, Any] = {
        "device_id": device,
        "seq": seq,
        "ts": fields.pop("ts", 1_800_000_000.0 + seq),
        "model_id": "sensor-mlp",
        "model_version": "1.0.0",
        "outputs": [0.1, 0.2, 0.3, 0.4],
        "predicted": seq % 3,
        "confidence": 0.9,
        "features": [float(seq % 10), 1.0],
    }
    values.update(fields)
    return TelemetryRecord(**values)


def telemetry(device: str, seqs: range, site: str = "site-a", **fields: Any) -> bytes:
    records = [record(device, s, **fields).model_dump(mode="json", exclude_none=True) for s in seqs]
    return json.dumps(
        {"schema_version": 1, "device_id": device, "site": site, "sent_at": time.time(), "records": records}
    ).encode()
