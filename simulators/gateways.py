"""Site gateways as real `edge-gateway` processes, so that a fault can kill -9 one."""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from simulators.brokers import free_port
from simulators.scenario import SimError

FETCHES_OK = 'edge_gateway_bundle_fetches_total{result="ok"}'


@dataclass(frozen=True)
class InTransit:
    """A gateway's part of the records on their way: queued upstream, in open windows, or not read yet."""

    upstream_items: int  # items in its upstream queue
    open_windows: int  # summary and drift windows not closed yet (their records not sent yet)
    highest_seq: dict[str, int]  # per device, the highest seq it has read from the broker


class GatewayProcess:
    """One site gateway in a process of its own: started, killed -9, restarted, scraped."""

    def __init__(
        self,
        workdir: Path,
        config: dict[str, Any],
        *,
        command_prefix: Sequence[str] = (),
        reach: str = "127.0.0.1",
    ) -> None:
        """``command_prefix`` runs it elsewhere (``ip netns exec NS``), where ``reach`` reaches it."""
        self.workdir = workdir
        self.http_port = free_port()
        self.command_prefix, self.reach = list(command_prefix), reach
        http_host = "127.0.0.1" if reach == "127.0.0.1" else "0.0.0.0"
        self.config = {
            "gateway_id": "gw-a",
            "site": "site-a",
            "data_dir": str(workdir / "data"),
            "http": {"host": http_host, "port": self.http_port},
            **config,
        }
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "gateway.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config))
        self.process: subprocess.Popen[bytes] | None = None
        self.log = workdir / "gateway.log"
        #: Bundle downloads counted by processes since killed (a restart starts its counters at 0).
        self.fetches_before = 0.0

    @property
    def url(self) -> str:
        return f"http://{self.reach}:{self.http_port}"

    def start(self, wait: bool = True) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    *self.command_prefix,
                    sys.executable,
                    "-m",
                    "edge_gateway.cli",
                    "run",
                    "--config",
                    str(self.config_path),
                ],
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
        raise SimError(f"edge-gateway not healthy within {within}s:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """kill -9: no flush, no goodbye (its counters are read first: they die with it)."""
        assert self.process is not None
        with contextlib.suppress(httpx.HTTPError):
            self.fetches_before += self.metric(FETCHES_OK)
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def bundle_fetches(self) -> float:
        """Bundles downloaded over the uplink, over every life of the gateway (``result="ok"``)."""
        return self.fetches_before + self.metric(FETCHES_OK)

    @property
    def cache_dir(self) -> Path:
        """Where the gateway keeps bundles, each under its sha256 (what an attacker on the box edits)."""
        return Path(self.config["data_dir"]) / "bundles"

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

    def in_transit(self) -> InTransit:
        """What the gateway holds that the controller has not got yet, from its own store."""
        with sqlite3.connect(
            f"file:{Path(self.config['data_dir']) / 'gateway.sqlite'}?mode=ro", uri=True, timeout=10
        ) as db:
            queued = db.execute("SELECT count(*) FROM upstream").fetchone()[0]
            windows = db.execute("SELECT count(*) FROM windows").fetchone()[0]
            seen = dict(db.execute("SELECT device_id, hwm FROM dedup").fetchall())
        return InTransit(int(queued), int(windows), {d: int(h) for d, h in seen.items()})

    def dead_letters(self) -> list[tuple[str, str]]:
        """``(topic, reason)`` of what the gateway refused, oldest first, from its own store."""
        with sqlite3.connect(
            f"file:{Path(self.config['data_dir']) / 'gateway.sqlite'}?mode=ro", uri=True
        ) as db:
            return db.execute("SELECT topic, reason FROM dead_letters ORDER BY id").fetchall()
