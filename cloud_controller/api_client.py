"""A small client of the controller's API for the CLI (stdlib only: the cloud install has no httpx)."""

from __future__ import annotations

import argparse
import json
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from rich.console import Console

from cloud_controller.exceptions import ApiRefused, ConfigError, Unreachable


class ApiClient:
    def __init__(
        self, url: str, token: str | None, *, timeout_s: float = 30.0, ca_file: str | Path | None = None
    ) -> None:
        """``ca_file``: the CA of the controller's certificate when it is not a public one (HTTPS)."""
        self.url, self.token, self.timeout_s = url.rstrip("/"), token, timeout_s
        self._tls: ssl.SSLContext | None = None
        if ca_file is not None:
            try:
                self._tls = ssl.create_default_context(cafile=str(ca_file))
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"--ca-file {ca_file}: {exc}") from None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ApiClient:
        """The client ``api_options`` describes: ``--url``, ``--token`` and ``--ca-file`` if offered."""
        return cls(args.url, args.token, ca_file=getattr(args, "ca_file", None))

    def get(self, path: str, **params: str | None) -> Any:
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        return self._send("GET", f"{path}?{query}" if query else path, None)

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self._send("POST", path, body)

    def upload(self, path: str, stream: IO[bytes], size: int, content_type: str) -> Any:
        """POST ``size`` bytes of ``stream`` as the raw body (not multipart), e.g. a bundle ``.tar``."""
        return self._send("POST", path, None, raw=(stream, size, content_type))

    def _send(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        *,
        raw: tuple[IO[bytes], int, str] | None = None,
    ) -> Any:
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data: bytes | IO[bytes] | None = None
        if body is not None:
            data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        if raw is not None:
            data, size, headers["Content-Type"] = raw
            headers["Content-Length"] = str(size)
        request = urllib.request.Request(
            f"{self.url}/api/v1{path}", data=data, headers=headers, method=method
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s, context=self._tls) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            refused = ApiRefused(f"{exc.code}: {_detail(exc.read())}")
            refused.status = exc.code  # type: ignore[attr-defined]
            raise refused from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise Unreachable(f"cannot reach the controller at {self.url}: {reason}") from None


def _detail(body: bytes) -> str:
    """FastAPI's ``detail``: a sentence, or a list of field errors (each with where and what)."""
    try:
        detail = json.loads(body).get("detail", body.decode(errors="replace"))
    except (ValueError, AttributeError):
        return body.decode(errors="replace")[:500]
    if isinstance(detail, list):
        return "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', [])[1:])}: {e.get('msg')}"
            for e in detail
            if isinstance(e, dict)
        )
    return str(detail)


def api_options(token_help: str, *, ca_file: bool = False) -> argparse.ArgumentParser:
    """The options every API command shares (``--url``, ``--token``, ``--json``), as a parent parser;
    ``--ca-file`` too for the commands whose client is built by `ApiClient.from_args`."""
    api = argparse.ArgumentParser(add_help=False)
    api.add_argument(
        "--url",
        default=os.environ.get("EDGEFLEET_URL", "http://127.0.0.1:8000"),
        help="the controller's base URL (env EDGEFLEET_URL; default http://127.0.0.1:8000)",
    )
    api.add_argument(
        "--token", default=os.environ.get("EDGEFLEET_TOKEN"), help=f"{token_help} (env EDGEFLEET_TOKEN)"
    )
    if ca_file:
        api.add_argument(
            "--ca-file",
            default=os.environ.get("EDGEFLEET_CA_FILE") or None,
            metavar="PEM",
            help="the CA that signed an HTTPS controller's certificate, when it is a private one such as "
            "the fleet CA's ca.pem (env EDGEFLEET_CA_FILE; default: the system's CAs)",
        )
    api.add_argument("--json", action="store_true", help="print the API's JSON answer instead of tables")
    return api


def show(args: argparse.Namespace, answer: Any, tables: Callable[[Console], None]) -> None:
    """The API's JSON answer with ``--json``, else what ``tables`` prints for a person."""
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        tables(Console(width=160))
