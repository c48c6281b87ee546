"""Schemathesis against the live OpenAPI spec (bounded examples): no request may cause a 500."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.controller.conftest import Controller

SCHEMATHESIS = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")


@pytest.mark.slow
@pytest.mark.parametrize("role", ["operator", "gateway"])
def test_no_generated_request_causes_a_server_error(
    sqlite_controller: Controller, role: str, tmp_path: Path
) -> None:
    with sqlite_controller.client("operator") as client:
        client.post("/api/v1/sites", json={"id": "site-a"})
        client.post("/api/v1/devices", json={"id": "dev-1", "site_id": "site-a"})
    result = subprocess.run(
        [
            SCHEMATHESIS,
            "run",
            f"{sqlite_controller.url}/openapi.json",
            "-H",
            f"Authorization: Bearer {sqlite_controller.tokens[role]}",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "20",
            "--seed",
            "1",
            "--phases",
            "examples,coverage,fuzzing",
            "--report-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:]
