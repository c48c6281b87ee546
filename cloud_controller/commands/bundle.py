"""``cloud-controller bundle upload``: a signed bundle into the model registry."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from rich.markup import escape

from cloud_controller.api_client import ApiClient, api_options, show
from cloud_controller.exceptions import ConfigError
from model_compiler.archive import pack

#: What ``POST /api/v1/bundles`` takes: the archive itself as the body, not a multipart form.
TAR = "application/x-tar"


def add(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    bundle = commands.add_parser(
        "bundle",
        help="upload signed model bundles to the registry",
        description="Talks to a running controller's API (operator token).",
    )
    sub = bundle.add_subparsers(dest="bundle_command", required=True, metavar="BUNDLE_COMMAND")
    upload = sub.add_parser(
        "upload",
        parents=[api_options("an operator API token", ca_file=True)],
        help="upload a bundle (.tar or directory) from `model-compiler build`",
        description="Upload PATH, a bundle .tar that `model-compiler build` wrote (e.g. out/onnx-fp32.tar) "
        "or a bundle directory (archived here the way model-compiler does). It is sent as the raw .tar "
        "body of POST /api/v1/bundles (a multipart upload is refused as 'not a complete bundle archive'). "
        "The controller verifies the signature against its trusted_keys, stores the archive under its "
        "sha256 and registers the model version from the manifest (a candidate) if it is new; uploading "
        "the same archive again changes nothing. Prints the model, version, runtime and sha256.",
    )
    upload.add_argument("path", metavar="PATH", type=Path, help="bundle .tar or bundle directory")
    upload.set_defaults(run=_upload)


def _upload(args: argparse.Namespace) -> int:
    client = ApiClient.from_args(args)
    path: Path = args.path
    if path.is_dir():
        with tempfile.TemporaryDirectory() as tmp:
            # pack() writes <dir>.tar beside the directory: beside a link to it, not in the user's folder.
            link = Path(tmp) / "bundle"
            link.symlink_to(path.resolve(), target_is_directory=True)
            stored = _send(client, pack(link))
    elif path.is_file():
        stored = _send(client, path)
    else:
        raise ConfigError(f"{path} does not exist (a bundle .tar or directory from `model-compiler build`)")
    version = client.get(f"/models/versions/{stored['model_version_id']}")
    answer = {**stored, "model_id": version["model_id"], "version": version["version"]}
    show(args, answer, lambda c: c.print(_stored(answer, version["stage"])))
    return 0


def _send(client: ApiClient, archive: Path) -> Any:
    with archive.open("rb") as stream:
        return client.upload("/bundles", stream, archive.stat().st_size, TAR)


def _stored(answer: dict[str, Any], stage: str) -> str:
    return (
        f"stored {escape(answer['model_id'])}@{escape(answer['version'])} ({answer['runtime']}, "
        f"{answer['size']} bytes, stage {stage})\nsha256 {answer['sha256']}"
    )
