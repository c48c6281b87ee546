"""The cloud controller as a real `cloud-controller serve` process, with tokens for the run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from sqlmodel import Session, func, select

from cloud_controller.auth import create_token
from cloud_controller.db import make_engine
from cloud_controller.migrate import upgrade
from cloud_controller.models import Device, Role, Summary, Telemetry
from simulators.brokers import free_port
from simulators.ledger import Ledger, read_ledger
from simulators.scenario import SimError


class ControllerProcess:
    def __init__(
        self,
        workdir: Path,
        trusted_key: Path,
        *,
        database_url: str | None = None,
        token_prefix: str = "fleet-sim",
    ) -> None:
        self.workdir = workdir
        self.token_prefix = token_prefix
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.database_url = database_url or f"sqlite:///{workdir / 'controller.sqlite'}"
        self.env = {
            **os.environ,
            "EDGEFLEET_CONTROLLER__DATABASE_URL": self.database_url,
            "EDGEFLEET_CONTROLLER__BUNDLE_DIR": str(workdir / "bundles"),
            "EDGEFLEET_CONTROLLER__TRUSTED_KEYS": f'["{trusted_key}"]',
            "EDGEFLEET_CONTROLLER__PORT": str(self.port),
        }
        self.tokens: dict[str, str] = {}
        self.process: subprocess.Popen[bytes] | None = None
        self.log = workdir / "controller.log"
        self._engine = None

    def start(self, tokens: tuple[tuple[str, Role, str | None], ...] = ()) -> None:
        """Migrate, issue tokens (operator, viewer and ``(name, role, site)``), serve; return when healthy."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.tokens:
            upgrade(self.database_url)
            engine = make_engine(self.database_url)
            with Session(engine) as session:
                for name, role, site in (
                    ("operator", Role.OPERATOR, None),
                    ("viewer", Role.VIEWER, None),
                    *tokens,
                ):
                    self.tokens[name] = create_token(
                        session=session, name=f"{self.token_prefix}-{name}", role=role, site_id=site
                    )
            engine.dispose()
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cloud_controller.cli", "serve", "--no-migrate"],
                env=self.env,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SimError(f"cloud-controller exited at start: see {self.log}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise SimError(f"cloud-controller did not answer /healthz: see {self.log}")

    def gateway_token(self, site: str) -> str:
        """A gateway token bound to ``site``."""
        key = f"gateway:{site}"
        if key not in self.tokens:
            engine = make_engine(self.database_url)
            with Session(engine) as session:
                self.tokens[key] = create_token(
                    session=session, name=f"{self.token_prefix}-{site}", role=Role.GATEWAY, site_id=site
                )
            engine.dispose()
        return self.tokens[key]

    def client(self, role: str = "operator") -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.tokens[role]}"}, timeout=30
        )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    # -- what the controller stored, read through its own data layer -------------------

    def stored(self) -> dict[str, dict[str, int]]:
        """Per device: records stored whole, records counted in window summaries, flagged stored."""
        if self._engine is None:
            self._engine = make_engine(self.database_url)
        out: dict[str, dict[str, int]] = {}
        with Session(self._engine) as session:
            whole = session.exec(
                select(Telemetry.device_id, func.count(), func.sum(Telemetry.anomaly)).group_by(
                    Telemetry.device_id
                )
            ).all()
            for device, count, anomalies in whole:
                out.setdefault(device, {"whole": 0, "summarised": 0, "anomalies": 0})
                out[device]["whole"], out[device]["anomalies"] = int(count), int(anomalies or 0)
            counted = session.exec(
                select(Summary.device_id, func.sum(Summary.count)).group_by(Summary.device_id)
            ).all()
            for device, count in counted:
                out.setdefault(device, {"whole": 0, "summarised": 0, "anomalies": 0})
                out[device]["summarised"] = int(count or 0)
        return out

    def ledger(self) -> Ledger:
        """Every ``(device_id, seq)`` the window summaries count, and those stored whole."""
        if self._engine is None:
            self._engine = make_engine(self.database_url)
        with Session(self._engine) as session:
            return read_ledger(session)

    def devices(self) -> dict[str, Device]:
        if self._engine is None:
            self._engine = make_engine(self.database_url)
        with Session(self._engine) as session:
            return {d.id: d for d in session.exec(select(Device)).all()}
