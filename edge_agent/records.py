"""How a telemetry record is laid out in the outbox, and how it becomes a wire record.

The outbox stores each record as a compact msgpack list (no keys), with ``outputs`` and
``features`` as raw float32 bytes: building Python floats for every value costs more than
the inference itself on small models, so that work waits until a batch is sent, where it
is done with numpy for the whole batch. `to_wire` gives the `TelemetryRecord` shape;
`wire_json` writes a whole JSON batch in one go (orjson, arrays decoded column by column): about
five times cheaper than building Python floats for ``json.dumps``.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
import orjson

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


_ARRAYS = (FIELDS.index("outputs"), FIELDS.index("features"))
DECIMALS = 6  # float32 carries about 7 significant digits; more would be noise on the wire


def rows_as_bytes(array: np.ndarray) -> list[bytes]:
    """Each row of a 2-D array as float32 bytes."""
    array = np.ascontiguousarray(array, dtype=np.float32)
    blob, stride = array.tobytes(), array.shape[1] * 4
    return [blob[i : i + stride] for i in range(0, len(blob), stride)]


def to_wire(stored: list[tuple[int, list[Any]]]) -> list[dict[str, Any]]:
    """`TelemetryRecord`-shaped dicts from ``(seq, values)`` pairs; None fields are left out."""
    for index in _ARRAYS:
        _decode_arrays([values for _, values in stored], index)
    out = []
    for seq, values in stored:
        record: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "seq": seq}
        for name, value in zip(FIELDS, values, strict=True):
            if value is not None:
                record[name] = value
        out.append(record)
    return out


def _decode_arrays(rows: list[list[Any]], index: int) -> None:
    for group, array in _float32_groups(rows, index):
        for values, decoded in zip(group, np.round(array.astype(np.float64), DECIMALS).tolist(), strict=True):
            values[index] = decoded


def _float32_groups(rows: list[list[Any]], index: int) -> list[tuple[list[list[Any]], np.ndarray]]:
    """The rows whose field ``index`` holds float32 bytes, grouped by length, each group one array."""
    # Group by length so that every group decodes in one numpy call.
    by_length: dict[int, list[list[Any]]] = {}
    for values in rows:
        blob = values[index]
        if isinstance(blob, bytes):
            by_length.setdefault(len(blob), []).append(values)
    return [
        (group, np.frombuffer(b"".join(v[index] for v in group), dtype=np.float32).reshape(len(group), -1))
        for group in by_length.values()
    ]


def wire_json(head: dict[str, Any], stored: list[tuple[int, bytes]]) -> bytes:
    """A JSON `TelemetryBatch`: ``head`` plus ``records`` made from ``(seq, stored body)`` pairs.

    Column by column: each array field of the whole batch decodes in one numpy call, and the
    records are built from the fields every record has in one ``dict(zip())`` each.
    """
    rows = [msgpack.unpackb(body, raw=False) for _, body in stored]
    if not rows:
        return orjson.dumps({**head, "records": []})
    columns = [list(column) for column in zip(*rows, strict=True)]
    for index in _ARRAYS:
        columns[index] = _floats(columns[index])
    every = [(name, column) for name, column in zip(FIELDS, columns, strict=True) if None not in column]
    some = [
        (name, column)
        for name, column in zip(FIELDS, columns, strict=True)
        if None in column and any(value is not None for value in column)
    ]
    names = ("schema_version", "seq", *(name for name, _ in every))
    records = [
        dict(zip(names, values, strict=True))
        for values in zip(
            [SCHEMA_VERSION] * len(rows), [seq for seq, _ in stored], *(c for _, c in every), strict=True
        )
    ]
    for name, column in some:
        for record, value in zip(records, column, strict=True):
            if value is not None:
                record[name] = value
    return orjson.dumps({**head, "records": records})


def _floats(column: list[Any]) -> list[Any]:
    """Float32 byte fields as lists of floats rounded like `to_wire`; anything else as it is."""
    first = column[0]
    if isinstance(first, bytes) and all(type(b) is bytes and len(b) == len(first) for b in column):
        array = np.frombuffer(b"".join(column), dtype=np.float32).reshape(len(column), -1)
        return np.round(array.astype(np.float64), DECIMALS).tolist()  # type: ignore[no-any-return]
    return [
        np.round(np.frombuffer(b, dtype=np.float32).astype(np.float64), DECIMALS).tolist()
        if isinstance(b, bytes)
        else b
        for b in column
    ]
