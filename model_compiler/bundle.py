"""Write signed model bundles: model files + ``manifest.json`` + ``manifest.sig``."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleet_protocol.bundle import MANIFEST_FILE, SIGNATURE_FILE, BundleManifest, FileEntry
from fleet_protocol.signing import file_digest, sign_manifest


def write_bundle(
    out_dir: str | Path,
    files: Mapping[str, str | Path],
    private_key: Ed25519PrivateKey,
    **manifest_fields: Any,
) -> BundleManifest:
    """Copy model files into ``out_dir``, digest them, and write the signed manifest.

    Parameters
    ----------
    out_dir : path
        The bundle directory; it must not exist yet or be empty.
    files : mapping
        Name inside the bundle -> source path.
    private_key : Ed25519PrivateKey
        Signs the manifest.
    **manifest_fields
        Every `BundleManifest` field but ``files`` (``model_id``, ``version``,
        ``runtime``, ``entrypoint``, ``inputs``, ``outputs``, ``preprocessing``, ...).

    Returns
    -------
    BundleManifest
        The manifest as written.
    """
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty")
    # Build beside the target and rename: a reader never sees half a bundle.
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    staging.chmod(0o755)
    try:
        entries = {}
        for name, source in files.items():
            target = staging / name
            shutil.copyfile(source, target)
            entries[name] = FileEntry(sha256=file_digest(target), size=target.stat().st_size)
        manifest = BundleManifest(files=entries, **manifest_fields)
        body, signature = sign_manifest(manifest, private_key)
        (staging / MANIFEST_FILE).write_bytes(body)
        (staging / SIGNATURE_FILE).write_bytes(signature)
        if out.exists():
            out.rmdir()
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest
