"""The controller logs one JSON object a line (access log included)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx

from cloud_controller.migrate import upgrade
from tests.utils.broker import free_port


def test_serve_writes_structured_json_logs(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.sqlite'}"
    upgrade(url)
    port = free_port()
    env = {"EDGEFLEET_CONTROLLER__DATABASE_URL": url, "EDGEFLEET_CONTROLLER__PORT": str(port), "PATH": ""}
    process = subprocess.Popen(
        [sys.executable, "-m", "cloud_controller.cli", "serve", "--no-migrate"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        httpx.get(f"http://127.0.0.1:{port}/api/v1/devices", timeout=5)
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=10)
    entries = [json.loads(line) for line in stderr.splitlines() if line.strip()]
    assert entries, "the server logged something"
    assert {"ts", "level", "logger", "message"} <= set(entries[0])
    assert any(
        e["logger"] == "uvicorn.access" and "/api/v1/devices" in e["message"] and "401" in e["message"]
        for e in entries
    )
