"""Errors raised by the protocol layer.

Every daemon catches these at its boundary, counts them by ``reason`` and keeps the
raw bytes in a dead-letter place: a bad payload never crashes a daemon.
"""

from __future__ import annotations

from datetime import datetime


class ProtocolError(ValueError):
    """Base class: something on the wire or on disk does not meet the contract."""

    reason = "protocol_error"


class InvalidTopic(ProtocolError):
    """A topic or an identifier does not fit the ``fleet/{site}/{device}/{kind}`` tree."""

    reason = "invalid_topic"


class PayloadTooLarge(ProtocolError):
    """A payload is larger than the codec accepts."""

    reason = "too_large"


class MalformedPayload(ProtocolError):
    """A payload cannot be decoded, or does not validate against its schema."""

    reason = "malformed"


class UnknownSchemaVersion(ProtocolError):
    """A payload declares a schema version this build does not understand."""

    reason = "unknown_schema_version"


class BundleError(ProtocolError):
    """A model bundle must not be run: the message says why."""

    reason = "bad_bundle"


class SignatureError(BundleError):
    """The manifest signature is missing, malformed, from an untrusted key, or wrong."""

    reason = "bad_signature"


class KeyRetired(SignatureError):
    """The manifest is rightly signed, by a trusted key that was retired before now.

    ``key_id`` and ``retired_at`` (an aware datetime) say which key and since when.
    """

    reason = "key_retired"

    def __init__(self, message: str, *, key_id: str, retired_at: datetime) -> None:
        super().__init__(message)
        self.key_id, self.retired_at = key_id, retired_at


class DigestMismatch(BundleError):
    """A file of the bundle does not match the sha256 or size in its manifest."""

    reason = "digest_mismatch"
