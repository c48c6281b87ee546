from __future__ import annotations

import json

import msgpack
import pytest

from fleet_protocol import (
    DesiredState,
    DeviceEvent,
    Encoding,
    MalformedPayload,
    ModelAssignment,
    PayloadTooLarge,
    ReportedState,
    TelemetryBatch,
    TelemetryRecord,
    UnknownSchemaVersion,
    decode,
    encode,
    sniff_encoding,
)


def _record(seq: int = 1, **extra: object) -> TelemetryRecord:
    return TelemetryRecord(
        device_id="dev-1",
        seq=seq,
        ts=1_700_000_000.5,
        model_id="sensor-mlp",
        model_version="1.0.0",
        outputs=[0.1, -2.5, 3.0, 0.0],
        predicted=2,
        confidence=0.91,
        features=[0.5] * 16,
        **extra,  # type: ignore[arg-type]
    )


MESSAGES = [
    TelemetryBatch(device_id="dev-1", site="s1", records=[_record(1), _record(2, anomaly=True)]),
    ReportedState(device_id="dev-1", site="s1", online=True, model_id="m", model_version="1.0.0"),
    DesiredState(
        device_id="dev-1",
        revision=3,
        model=ModelAssignment(model_id="m", version="1.2.0", manifest_sha256="a" * 64),
    ),
    DeviceEvent(device_id="dev-1", kind="ota.verified", message="bundle verified", data={"bytes": 1234}),
]


@pytest.mark.parametrize("encoding", list(Encoding))
@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_payload_round_trips_in_every_encoding(message, encoding: Encoding) -> None:  # type: ignore[no-untyped-def]
    data = encode(message, encoding)
    assert sniff_encoding(data) is encoding
    assert decode(data, type(message)) == message


def test_msgpack_is_more_compact_than_json_for_telemetry() -> None:
    # Realistic values: model outputs and features rounded to 6 decimals, as the agent sends them.
    records = [
        _record(seq).model_copy(
            update={"outputs": [-2.345678, 0.123456, 4.56789, -0.98765], "features": [1.234567] * 16}
        )
        for seq in range(1, 51)
    ]
    batch = TelemetryBatch(device_id="dev-1", site="s1", records=records)
    assert len(encode(batch, Encoding.MSGPACK)) < 0.9 * len(encode(batch, Encoding.JSON))


def test_decode_rejects_unknown_schema_version() -> None:
    raw = json.loads(encode(MESSAGES[0]))
    raw["schema_version"] = 2
    with pytest.raises(UnknownSchemaVersion, match="schema_version 2 is not supported"):
        decode(json.dumps(raw).encode(), TelemetryBatch)


def test_decode_rejects_missing_schema_version() -> None:
    with pytest.raises(MalformedPayload, match="no integer schema_version"):
        decode(b'{"device_id": "dev-1"}', TelemetryBatch)


def test_decode_rejects_oversized_payload_before_parsing() -> None:
    with pytest.raises(PayloadTooLarge, match="limit 100"):
        decode(b"{" + b" " * 200 + b"}", TelemetryBatch, max_bytes=100)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"not json", "neither valid JSON nor msgpack"),
        (b"[1, 2]", "must be an object"),
        (b"\xc1", "neither valid JSON nor msgpack"),
        (b"[" * 100_000, "neither valid JSON nor msgpack"),
        (msgpack.packb([1, 2]), "must be an object"),
    ],
)
def test_decode_rejects_garbage_with_a_reason(payload: bytes, message: str) -> None:
    with pytest.raises(MalformedPayload, match=message):
        decode(payload, TelemetryBatch)


def test_validation_error_names_the_field() -> None:
    raw = json.loads(encode(MESSAGES[0]))
    raw["records"][1]["seq"] = 0
    with pytest.raises(
        MalformedPayload, match=r"records\.1\.seq: Input should be greater than or equal to 1"
    ):
        decode(json.dumps(raw).encode(), TelemetryBatch)


def test_nan_never_validates() -> None:
    raw = json.loads(encode(MESSAGES[0]))
    raw["records"][0]["outputs"][0] = float("nan")
    with pytest.raises(MalformedPayload, match="outputs"):
        decode(json.dumps(raw).encode(), TelemetryBatch)


def test_batch_refuses_records_of_another_device() -> None:
    raw = json.loads(encode(MESSAGES[0]))
    raw["records"][1]["device_id"] = "dev-2"
    with pytest.raises(MalformedPayload, match="records\\[1\\] has device_id 'dev-2'"):
        decode(json.dumps(raw).encode(), TelemetryBatch)


def test_unknown_fields_are_refused() -> None:
    raw = json.loads(encode(MESSAGES[1]))
    raw["surprise"] = 1
    with pytest.raises(MalformedPayload, match="surprise: Extra inputs are not permitted"):
        decode(json.dumps(raw).encode(), ReportedState)
