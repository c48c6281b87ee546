"""PostgreSQL and Chromium are part of the suite: CI fails without them instead of skipping."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.controller.conftest import REQUIRE_BROWSER, REQUIRE_PG

ROOT = Path(__file__).resolve().parents[2]
#: One test that needs PostgreSQL and one that needs Chromium, both cheap to reach the check.
NEEDING_BOTH = [
    "tests/controller/test_migrations.py::test_migrate_on_postgresql_makes_every_integer_64_bit",
    "tests/controller/test_dashboard_browser.py::test_dashboard_shows_the_seeded_fleet_without_console_errors",
]


def _pytest_without_services(required: bool) -> subprocess.CompletedProcess[str]:
    """Those tests on a machine where PostgreSQL does not answer and Chromium is not installed."""
    env = {k: v for k, v in os.environ.items() if k not in (REQUIRE_PG, REQUIRE_BROWSER)}
    env["EDGEFLEET_TEST_PG"] = "postgresql://postgres@127.0.0.1:1/postgres"  # nothing listens on port 1
    env["EDGEFLEET_CHROMIUM"] = str(ROOT / "no-such-chromium")
    if required:
        env |= {REQUIRE_PG: "1", REQUIRE_BROWSER: "1"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *NEEDING_BOTH],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_missing_postgresql_and_chromium_skip_on_a_developer_machine() -> None:
    result = _pytest_without_services(required=False)
    assert result.returncode == 0, result.stdout[-2000:]
    assert "2 skipped" in result.stdout
    assert "PostgreSQL not reachable at postgresql://postgres@127.0.0.1:1/postgres" in result.stdout
    assert "Chromium is not installed" in result.stdout


def test_missing_postgresql_and_chromium_fail_where_required() -> None:
    result = _pytest_without_services(required=True)
    assert result.returncode == 1, result.stdout[-2000:]
    assert "skipped" not in result.stdout
    assert "1 failed, 1 error" in result.stdout, "the PostgreSQL test fails, the Chromium fixture errors"
    unreachable = "PostgreSQL not reachable at postgresql://postgres@127.0.0.1:1/postgres: OperationalError"
    assert f"{unreachable} ({REQUIRE_PG}=1: this test must run here)" in result.stdout
    assert f"Chromium is not installed at {ROOT / 'no-such-chromium'}" in result.stdout


def test_ci_installs_and_requires_both_then_runs_the_readme_test_command() -> None:
    script = (ROOT / ".ci" / "run").read_text()
    commands = [
        line.strip() for line in script.splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]
    assert re.search(r"(apt-get install|apt_install) .*\bpostgresql\b", script), (
        "installs PostgreSQL when missing"
    )
    assert re.search(r"(apt-get install|apt_install) .*\bchromium\b", script), (
        "installs Chromium when missing"
    )
    assert "pg_ctlcluster" in script, "starts the cluster when it is down"
    assert f"export {REQUIRE_PG}=1" in commands and f"export {REQUIRE_BROWSER}=1" in commands
    assert commands[-1] == "make test", "ends with the README's test command, nothing weaker"
