"""A real controller: `cloud-controller serve` in its own process, on SQLite or PostgreSQL.

PostgreSQL and Chromium are part of the suite: without them their tests skip on a developer's
machine, and fail where the environment says they must be there (`.ci/run` exports
``EDGEFLEET_REQUIRE_PG=1`` and ``EDGEFLEET_REQUIRE_BROWSER=1``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import httpx
import pytest

from cloud_controller.models import Role
from simulators.controller import ControllerProcess

PG_ADMIN_URL = os.environ.get("EDGEFLEET_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REQUIRE_PG = "EDGEFLEET_REQUIRE_PG"
REQUIRE_BROWSER = "EDGEFLEET_REQUIRE_BROWSER"


def missing(requirement: str, reason: str) -> NoReturn:
    """Skip for want of a service, or fail when ``requirement`` (an environment variable) is 1."""
    if os.environ.get(requirement) == "1":
        pytest.fail(f"{reason} ({requirement}=1: this test must run here)", pytrace=False)
    pytest.skip(reason)


def _pg_available() -> str | None:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            return None
    except Exception as exc:  # any failure means: no PostgreSQL to test against here
        return f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc.__class__.__name__}"


@dataclass
class Controller:
    url: str
    database_url: str
    tokens: dict[str, str]
    env: dict[str, str]
    bundle_dir: Path

    def client(self, role: str | None = "operator") -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[role]}"} if role else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cloud_controller.cli", *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=120,
            check=False,
        )


def database_url(kind: str, tmp: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp / 'controller.sqlite'}"
        return
    reason = _pg_available()
    if reason:
        missing(REQUIRE_PG, reason)
    import psycopg

    name = f"edgefleet_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


#: The rollout engine ticks this often in tests: waves advance within a fraction of a second.
TICK_S = "0.1"


def start_process(tmp: Path, db_url: str, trusted_key: Path) -> ControllerProcess:
    """The simulators' controller process, with a token for every role (two site-bound gateways)."""
    process = ControllerProcess(tmp, trusted_key, database_url=db_url, token_prefix="test")
    process.env["EDGEFLEET_CONTROLLER__ROLLOUT_TICK_S"] = TICK_S
    process.start(
        (
            ("gateway", Role.GATEWAY, "site-a"),
            ("device", Role.DEVICE, None),
            ("gateway-b", Role.GATEWAY, "site-b"),
        )
    )
    return process


def as_controller(process: ControllerProcess, tmp: Path) -> Controller:
    return Controller(process.url, process.database_url, process.tokens, process.env, tmp / "bundles")


def start_controller(tmp: Path, db_url: str, trusted_key: Path) -> tuple[subprocess.Popen[bytes], Controller]:
    process = start_process(tmp, db_url, trusted_key)
    assert process.process is not None
    return process.process, as_controller(process, tmp)


@pytest.fixture(params=["sqlite", "postgres"])
def controller(request: pytest.FixtureRequest, tmp_path: Path, public_key_file: Path) -> Iterator[Controller]:
    for url in database_url(request.param, tmp_path):
        process, ctl = start_controller(tmp_path, url, public_key_file)
        try:
            yield ctl
        finally:
            process.terminate()
            process.wait(10)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def shared_controller(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, public_key_file: Path
) -> Iterator[Controller]:
    """One controller per store for a whole module: for tests that only read, or write what they check."""
    tmp = tmp_path_factory.mktemp(f"controller-{request.param}")
    for url in database_url(request.param, tmp):
        process, ctl = start_controller(tmp, url, public_key_file)
        try:
            yield ctl
        finally:
            process.terminate()
            process.wait(10)


@pytest.fixture
def sqlite_controller(tmp_path: Path, public_key_file: Path) -> Iterator[Controller]:
    for url in database_url("sqlite", tmp_path):
        process, ctl = start_controller(tmp_path, url, public_key_file)
        try:
            yield ctl
        finally:
            process.terminate()
            process.wait(10)


@pytest.fixture
def chromium() -> str:
    """Debian's Chromium (``EDGEFLEET_CHROMIUM`` names another): Playwright cannot download its own here."""
    path = os.environ.get("EDGEFLEET_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        missing(REQUIRE_BROWSER, f"Chromium is not installed at {path} (.ci/run installs Debian's chromium)")
    return path
