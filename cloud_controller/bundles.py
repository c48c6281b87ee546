"""Verifies uploaded bundle archives with the same code devices use (fleet_protocol)."""

from __future__ import annotations

import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fleet_protocol import (
    DRIFT_REFERENCE_FILE,
    BundleError,
    BundleManifest,
    DriftReference,
    ProtocolError,
    decode,
)
from fleet_protocol.signing import manifest_sha256, verify_bundle

#: A drift reference is a few numbers per bin and feature; anything larger is not one.
_MAX_REFERENCE_BYTES = 16 * 1024 * 1024


class BundleRejected(Exception):
    pass


@dataclass(frozen=True)
class VerifiedBundle:
    manifest: BundleManifest
    manifest_sha256: str
    drift_reference: DriftReference | None


def verify_upload(archive: Path, keys: list[Ed25519PublicKey]) -> VerifiedBundle:
    """The verified manifest, its sha256 and the drift reference if listed, or `BundleRejected` saying why."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            with tarfile.open(archive, "r:*") as tar:
                tar.extractall(tmp, filter="data")
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise BundleRejected(f"not a complete bundle archive: {exc}") from None
        try:
            manifest = verify_bundle(tmp, keys)
            sha = manifest_sha256(tmp)
        except BundleError as exc:
            raise BundleRejected(str(exc)) from None
        reference = None
        # Only a listed file is covered by the signature: an unlisted one is ignored.
        if DRIFT_REFERENCE_FILE in manifest.files:
            try:
                data = (Path(tmp) / DRIFT_REFERENCE_FILE).read_bytes()
                reference = decode(data, DriftReference, max_bytes=_MAX_REFERENCE_BYTES)
            except ProtocolError as exc:
                raise BundleRejected(f"{DRIFT_REFERENCE_FILE} is invalid: {exc}") from None
        return VerifiedBundle(manifest, sha, reference)
