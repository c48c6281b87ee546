"""Bytes <-> payload models, with size limits and errors that say what is wrong.

JSON is the default encoding. msgpack is the compact option; which one a device
uses is negotiated through `DesiredState.telemetry_encoding` and announced in
`ReportedState.encodings`. A decoder never needs to be told: a JSON object starts
with ``{`` and a msgpack map never does.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

import msgpack
from pydantic import ValidationError

from fleet_protocol.exceptions import MalformedPayload, PayloadTooLarge, UnknownSchemaVersion
from fleet_protocol.messages import Encoding, ProtocolModel

M = TypeVar("M", bound=ProtocolModel)

#: Largest payload any daemon accepts. Mosquitto's own default limit is far higher;
#: this one keeps a hostile publisher from making a gateway allocate much.
MAX_PAYLOAD_BYTES = 256 * 1024

_MAX_ERRORS_SHOWN = 5


def sniff_encoding(data: bytes) -> Encoding:
    """Tell the encoding of a payload from its first byte.

    Every msgpack map starts with a byte >= 0x80 (fixmap, map16, map32); JSON text never does.
    """
    return Encoding.MSGPACK if data[:1] and data[0] >= 0x80 else Encoding.JSON


def encode(message: ProtocolModel, encoding: Encoding = Encoding.JSON) -> bytes:
    """Serialize a payload model.

    Parameters
    ----------
    message : ProtocolModel
        Any payload model of `fleet_protocol.messages`.
    encoding : Encoding
        ``json`` (default) or ``msgpack``.

    Returns
    -------
    bytes
        The payload, ready to publish.
    """
    if encoding is Encoding.JSON:
        return message.model_dump_json(exclude_none=True).encode()
    return msgpack.packb(message.model_dump(mode="json", exclude_none=True), use_bin_type=True)


def decode(data: bytes, model: type[M], *, max_bytes: int = MAX_PAYLOAD_BYTES) -> M:
    """Parse and validate a payload.

    Parameters
    ----------
    data : bytes
        The payload as received.
    model : type
        The payload model expected on that topic.
    max_bytes : int
        Size limit; larger payloads are refused before parsing.

    Returns
    -------
    ProtocolModel
        An instance of ``model``.

    Raises
    ------
    PayloadTooLarge, MalformedPayload, UnknownSchemaVersion
        With a message that names the problem.
    """
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"{model.__name__} payload is {len(data)} bytes, limit {max_bytes}")
    if sniff_encoding(data) is Encoding.JSON:
        # The fast path: pydantic parses and validates JSON in one pass. Anything it refuses
        # (or a version this build does not read) goes the slow way below, for the precise error.
        try:
            message = model.model_validate_json(data)
        except ValidationError:
            pass
        else:
            if message.schema_version in model.SUPPORTED_VERSIONS:
                return message
    raw = _parse(data, model.__name__)
    if not isinstance(raw, dict):
        raise MalformedPayload(f"{model.__name__} payload must be an object, got {type(raw).__name__}")
    version = raw.get("schema_version", None)
    if isinstance(version, bool) or not isinstance(version, int):
        raise MalformedPayload(f"{model.__name__} payload has no integer schema_version")
    if version not in model.SUPPORTED_VERSIONS:
        supported = ", ".join(str(v) for v in sorted(model.SUPPORTED_VERSIONS))
        raise UnknownSchemaVersion(
            f"{model.__name__} schema_version {version} is not supported (supported: {supported})"
        )
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise MalformedPayload(f"invalid {model.__name__}: {describe_validation_error(exc)}") from None


def _parse(data: bytes, what: str) -> Any:
    try:
        if sniff_encoding(data) is Encoding.JSON:
            return json.loads(data)
        # Limits stop a few bytes from declaring a huge container.
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_array_len=65536,
            max_map_len=4096,
        )
    except (ValueError, TypeError, RecursionError, msgpack.UnpackException) as exc:
        # json.JSONDecodeError and msgpack's ExtraData are ValueErrors.
        raise MalformedPayload(f"{what} payload is neither valid JSON nor msgpack: {exc}") from None


def describe_validation_error(
    exc: ValidationError, *, limit: int | None = _MAX_ERRORS_SHOWN, separator: str = "; "
) -> str:
    """Name each failing field: ``records.3.seq: Input should be ...``.

    Parameters
    ----------
    exc : ValidationError
        The pydantic error.
    limit : int or None
        How many fields to name at most (a hostile payload can fail thousands); None: all.
    separator : str
        Between fields.
    """
    errors = exc.errors(include_url=False)
    shown = errors if limit is None else errors[:limit]
    parts = [f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in shown]
    if len(errors) > len(shown):
        parts.append(f"and {len(errors) - len(shown)} more")
    return separator.join(parts)
