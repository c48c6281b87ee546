"""Bundles as one file: a ``.tar`` of the bundle directory, and verification of either form."""

from __future__ import annotations

import tarfile
import tempfile
from collections.abc import Iterable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fleet_protocol import BundleError, BundleManifest
from fleet_protocol.signing import verify_bundle
from model_compiler.exceptions import VerifyError


def pack(bundle_dir: Path) -> Path:
    """Write ``<bundle_dir>.tar`` holding the bundle's files at its top level."""
    target = bundle_dir.with_suffix(".tar")
    with tarfile.open(target, "w") as tar:
        for path in sorted(bundle_dir.iterdir()):
            tar.add(path, arcname=path.name, recursive=False)
    return target


def verify_path(path: Path, trusted_keys: Iterable[Ed25519PublicKey]) -> BundleManifest:
    """Verify a bundle directory or ``.tar``; raise `VerifyError` saying why it fails."""
    keys = list(trusted_keys)
    if path.is_dir():
        return _verify_dir(path, keys)
    if not path.is_file():
        raise VerifyError(f"{path} does not exist")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            with tarfile.open(path, "r:*") as tar:
                # The "data" filter refuses absolute paths, "..", links and devices.
                tar.extractall(tmp, filter="data")
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise VerifyError(
                f"{path} is not a complete bundle archive (truncated or corrupt): {exc}"
            ) from None
        return _verify_dir(Path(tmp), keys)


def _verify_dir(path: Path, keys: list[Ed25519PublicKey]) -> BundleManifest:
    try:
        return verify_bundle(path, keys)
    except BundleError as exc:
        raise VerifyError(str(exc)) from None
