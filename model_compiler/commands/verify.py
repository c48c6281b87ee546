"""``model-compiler verify``."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from fleet_protocol.signing import load_public_key
from model_compiler.archive import verify_path


def add(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = commands.add_parser(
        "verify",
        help="check a bundle (directory or .tar) against trusted public keys",
        description="Exit 0 if the signature is from a trusted key and every file matches its digest; "
        "otherwise exit 5 and say why (wrong key, tampered manifest, digest mismatch, truncated archive).",
    )
    p.add_argument("bundle", type=Path, help="bundle directory or .tar")
    p.add_argument("--key", type=Path, action="append", required=True, help="trusted public key (repeatable)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, console: Console) -> int:
    manifest = verify_path(args.bundle, [load_public_key(k) for k in args.key])
    console.print(
        f"[green]ok[/] {manifest.ref} ({manifest.runtime.value}), {len(manifest.files)} files verified"
    )
    return 0
