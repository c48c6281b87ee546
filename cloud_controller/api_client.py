"""A small client of the controller's API for the CLI (stdlib only: the cloud install has no httpx)."""

from __future__ import annotations

import argparse
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from cloud_controller.exceptions import ApiRefused, Unreachable


class ApiClient:
    def __init__(self, url: str, token: str | None, *, timeout_s: float = 30.0) -> None:
        self.url, self.token, self.timeout_s = url.rstrip("/"), token, timeout_s

    def get(self, path: str, **params: str | None) -> Any:
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        return self._send("GET", f"{path}?{query}" if query else path, None)

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self._send("POST", path, body)

    def _send(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        request = urllib.request.Request(
            f"{self.url}/api/v1{path}", data=data, headers=headers, method=method
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise ApiRefused(f"{exc.code}: {_detail(exc.read())}") from None
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


def api_options(token_help: str) -> argparse.ArgumentParser:
    """The options every API command shares (``--url``, ``--token``, ``--json``), as a parent parser."""
    api = argparse.ArgumentParser(add_help=False)
    api.add_argument(
        "--url",
        default=os.environ.get("EDGEFLEET_URL", "http://127.0.0.1:8000"),
        help="the controller's base URL (env EDGEFLEET_URL; default http://127.0.0.1:8000)",
    )
    api.add_argument(
        "--token", default=os.environ.get("EDGEFLEET_TOKEN"), help=f"{token_help} (env EDGEFLEET_TOKEN)"
    )
    api.add_argument("--json", action="store_true", help="print the API's JSON answer instead of tables")
    return api
