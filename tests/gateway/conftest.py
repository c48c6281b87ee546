"""A real gateway: `edge-gateway run` in its own process, so that a test can kill -9 it."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.controller.conftest import Controller, start_controller
from tests.utils.broker import free_port


class GatewayProcess:
    def __init__(self, workdir: Path, config: dict[str, Any]) -> None:
        self.workdir = workdir
        self.http_port = free_port()
        self.config = {
            "gateway_id": "gw-a",
            "site": "site-a",
            "data_dir": str(workdir / "data"),
            "http": {"host": "127.0.0.1", "port": self.http_port},
            **config,
        }
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "gateway.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config))
        self.process: subprocess.Popen[bytes] | None = None
        self.log = workdir / "gateway.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, wait: bool = True) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "edge_gateway.cli", "run", "--config", str(self.config_path)],
                stdout=log,
                stderr=log,
            )
        if wait:
            self.wait_healthy()

    def wait_healthy(self, within: float = 30.0) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"edge-gateway exited with {self.process.returncode}:\n{self.log.read_text()}"
                )
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"edge-gateway not healthy within {within}s:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """kill -9: no flush, no goodbye."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def metrics(self) -> dict[str, float]:
        """``name{label="v"}`` -> value, from the gateway's /metrics."""
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return out

    def metric(self, name: str) -> float:
        return self.metrics().get(name, 0.0)

    def dead_letters(self) -> list[tuple[str, str]]:
        with sqlite3.connect(Path(self.config["data_dir"]) / "gateway.sqlite") as db:
            return db.execute("SELECT topic, reason FROM dead_letters ORDER BY id").fetchall()


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
