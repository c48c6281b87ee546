"""``model-compiler keygen`` and ``sign``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console

from fleet_protocol import MANIFEST_FILE, SIGNATURE_FILE, BundleManifest, FileEntry
from fleet_protocol.signing import (
    file_digest,
    generate_private_key,
    key_id,
    load_private_key,
    private_key_pem,
    public_key_pem,
    sign_manifest,
)
from model_compiler.archive import pack
from model_compiler.exceptions import InputError


def add(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    keygen = commands.add_parser(
        "keygen",
        help="make an ed25519 signing key pair",
        description="Write PREFIX.pem (private: keep it secret) and PREFIX.pub "
        "(public: ship it to devices as a trusted key).",
    )
    keygen.add_argument("prefix", type=Path, help="e.g. keys/fleet -> keys/fleet.pem, keys/fleet.pub")
    keygen.set_defaults(run=run_keygen)
    sign = commands.add_parser(
        "sign",
        help="re-digest a bundle's files and sign its manifest",
        description="Recompute the sha256 and size of every file the manifest lists, "
        "then sign the manifest with KEY and rewrite the .tar beside it.",
    )
    sign.add_argument("bundle", type=Path, help="bundle directory")
    sign.add_argument("--key", type=Path, required=True, help="ed25519 private key (PEM)")
    sign.set_defaults(run=run_sign)


def run_keygen(args: argparse.Namespace, console: Console) -> int:
    key = generate_private_key()
    private, public = args.prefix.with_suffix(".pem"), args.prefix.with_suffix(".pub")
    if private.exists():
        raise InputError(f"{private} exists: refusing to overwrite a signing key")
    private.parent.mkdir(parents=True, exist_ok=True)
    private.touch(mode=0o600)
    private.write_bytes(private_key_pem(key))
    public.write_bytes(public_key_pem(key.public_key()))
    console.print(f"key {key_id(key.public_key())}: private {private}, public {public}")
    return 0


def run_sign(args: argparse.Namespace, console: Console) -> int:
    manifest_path = args.bundle / MANIFEST_FILE
    if not manifest_path.is_file():
        raise InputError(f"{args.bundle} has no {MANIFEST_FILE}")
    manifest = BundleManifest.model_validate(json.loads(manifest_path.read_bytes()))
    files = {}
    for name in manifest.files:
        path = args.bundle / name
        if not path.is_file():
            raise InputError(f"{args.bundle} lacks {name}, listed in its manifest")
        files[name] = FileEntry(sha256=file_digest(path), size=path.stat().st_size)
    key = load_private_key(args.key)
    body, signature = sign_manifest(manifest.model_copy(update={"files": files}), key)
    manifest_path.write_bytes(body)
    (args.bundle / SIGNATURE_FILE).write_bytes(signature)
    pack(args.bundle)
    console.print(f"signed {manifest.ref} with key {key_id(key.public_key())}")
    return 0
