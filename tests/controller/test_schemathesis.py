"""Schemathesis against the live OpenAPI spec, every check and every phase, on SQLite and PostgreSQL.

No generated request may cause a 500 on either store, every answer must be one the spec documents
(status, content type, body, ``Allow``), and the spec must refuse what the code refuses.
`schemathesis.toml` beside this file lists the exemptions (bodies whose validity is more than a
JSON Schema can say), with the reason for each.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.controller.conftest import Controller

SCHEMATHESIS = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")
HERE = Path(__file__).parent
ROOT = HERE.parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("role", ["operator", "gateway"])
def test_generated_requests_keep_the_published_contract(
    controller: Controller, role: str, tmp_path: Path
) -> None:
    with controller.client("operator") as client:
        client.post("/api/v1/sites", json={"id": "site-a"})
        client.post("/api/v1/devices", json={"id": "dev-1", "site_id": "site-a"})
    result = subprocess.run(
        [
            SCHEMATHESIS,
            "--config-file",
            str(HERE / "schemathesis.toml"),
            "run",
            f"{controller.url}/openapi.json",
            "-H",
            f"Authorization: Bearer {controller.tokens[role]}",
            # Bounded: every operation and check, 5 examples each (about 30 s per role and store
            # on a 2-core machine, with the jobs, labels and alarms APIs); the suite as a whole must
            # stay well under its 15 minutes.
            "--max-examples",
            "5",
            "--seed",
            "1",
            "--report-dir",
            str(tmp_path),
            "--no-color",
        ],
        cwd=ROOT,
        env={**os.environ, "SCHEMATHESIS_HOOKS": "tests.controller.schemathesis_hooks"},
        capture_output=True,
        text=True,
        timeout=900,  # a safety net: 200 s was seen on a 2-core AMD EPYC beside two other workers
    )
    summary = result.stdout[result.stdout.find("=== FAILURES ===") :] or result.stdout
    assert result.returncode == 0, summary[-6000:] + result.stderr[-2000:]
    assert "Stateful" in result.stdout and "generated" in result.stdout
