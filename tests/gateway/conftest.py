"""A real gateway: `edge-gateway run` in its own process, so that a test can kill -9 it."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from simulators.gateways import GatewayProcess
from tests.controller.conftest import Controller, start_controller


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[GatewayProcess] = []

    def make(config: dict[str, Any], name: str = "gateway", start: bool = True) -> GatewayProcess:
        gateway = GatewayProcess(tmp_path / name, config)
        started.append(gateway)
        if start:
            gateway.start()
        return gateway

    yield make
    for gateway in started:
        if gateway.alive():
            gateway.stop()


def controller_rows(database_url: str, query: str) -> list[tuple[Any, ...]]:
    """Read the controller's SQLite file directly: what it stored, not what an API says."""
    path = database_url.removeprefix("sqlite:///")
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return db.execute(query).fetchall()


@pytest.fixture
def controller(tmp_path: Path, public_key_file: Path) -> Iterator[Controller]:
    """A real `cloud-controller serve` on SQLite; its gateway token is for site-a."""
    home = tmp_path / "controller"
    home.mkdir()
    process, ctl = start_controller(home, f"sqlite:///{home / 'controller.sqlite'}", public_key_file)
    try:
        yield ctl
    finally:
        process.terminate()
        process.wait(10)
