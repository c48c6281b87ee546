"""Verifies uploaded bundle archives with the same code devices use (fleet_protocol)."""

from __future__ import annotations

import tarfile
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fleet_protocol import BundleError, BundleManifest
from fleet_protocol.signing import manifest_sha256, verify_bundle


class BundleRejected(Exception):
    pass


def verify_upload(archive: Path, keys: list[Ed25519PublicKey]) -> tuple[BundleManifest, str]:
    """The manifest and its sha256, or `BundleRejected` saying why."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            with tarfile.open(archive, "r:*") as tar:
                tar.extractall(tmp, filter="data")
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise BundleRejected(f"not a complete bundle archive: {exc}") from None
        try:
            return verify_bundle(tmp, keys), manifest_sha256(tmp)
        except BundleError as exc:
            raise BundleRejected(str(exc)) from None
