"""A fleet for rollout tests, played through the real API: devices report as their gateway relays them.

Devices of group "presses" (label line=press) run sensor-mlp 1.0.0 by deployment; 2.0.0 is in the
registry too. A device's update is what its agent would report: a `ReportedState` carrying its
`OtaStatus`, and the matching ``ota.*`` event, in one `IngestBatch` posted with the gateway token.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleet_protocol import DeviceEvent, Health, OtaState, OtaStatus, ReportedState
from fleet_protocol.ingest import IngestBatch
from fleet_protocol.ota import RunStats, ShadowStats
from model_compiler.archive import pack
from tests.controller.conftest import Controller
from tests.controller.factories import rebundle

MODEL = "sensor-mlp"
OLD, NEW = "1.0.0", "2.0.0"


@dataclass
class Fleet:
    ctl: Controller
    devices: list[str]
    group_id: int
    manifests: dict[str, str] = field(default_factory=dict)  # version -> manifest sha256

    def client(self, role: str = "operator") -> httpx.Client:
        return self.ctl.client(role)

    # -- the operator ----------------------------------------------------------------

    def create(self, **body: Any) -> dict[str, Any]:
        payload = {"model_id": MODEL, "version": NEW, "group": "presses", **body}
        with self.client() as client:
            response = client.post("/api/v1/rollouts", json=payload)
        assert response.status_code == 201, response.text
        return response.json()

    def status(self, rollout_id: str) -> dict[str, Any]:
        with self.client("viewer") as client:
            response = client.get(f"/api/v1/rollouts/{rollout_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def wait(
        self, rollout_id: str, done: Callable[[dict[str, Any]], bool], timeout_s: float = 20
    ) -> dict[str, Any]:
        """The rollout's status once ``done`` holds (the engine ticks every 0.1 s in tests)."""
        deadline = time.monotonic() + timeout_s
        while True:
            status = self.status(rollout_id)
            if done(status):
                return status
            assert time.monotonic() < deadline, (
                f"rollout never got there: {status['state']}, {status['decisions']}"
            )
            time.sleep(0.1)

    # -- what devices get --------------------------------------------------------------

    def desired(self) -> dict[str, dict[str, Any]]:
        """Every device's desired state at the site, as its gateway pulls it."""
        with self.client("gateway") as gateway:
            response = gateway.get("/api/v1/sites/site-a/desired")
        assert response.status_code == 200, response.text
        return {s["device_id"]: s for s in response.json()["states"]}

    # -- what devices report -------------------------------------------------------------

    def report(
        self, devices: Iterable[str], state: OtaState | None, rollout_id: str | None, **extra: Any
    ) -> None:
        """``devices`` report their update to 2.0.0 at ``state`` (None: they run 1.0.0, no update)."""
        states, events = [], []
        for device in devices:
            ota = None
            if state is not None:
                ota = OtaStatus(
                    state=state,
                    model_id=MODEL,
                    version=NEW,
                    manifest_sha256=self.manifests[NEW],
                    rollout_id=rollout_id,
                    **extra,
                )
                events.append(
                    DeviceEvent(
                        device_id=device,
                        kind=f"ota.{state.value}",
                        message=state.value,
                        data=ota.model_dump(mode="json"),
                    )
                )
            running = NEW if state is OtaState.PROMOTED else OLD
            states.append(
                ReportedState(
                    device_id=device,
                    site="site-a",
                    online=True,
                    health=Health.OK,
                    model_id=MODEL,
                    model_version=running,
                    runtime="onnxruntime",
                    model_reason=ota.reason if ota is not None else None,
                    ota=ota,
                )
            )
        batch = IngestBatch(
            site="site-a", gateway_id="gw-1", batch_id=uuid.uuid4().hex, devices=states, events=events
        )
        with self.client("gateway") as gateway:
            response = gateway.post("/api/v1/ingest", content=batch.model_dump_json())
        assert response.status_code == 200, response.text


def shadow(agreement: float, champion_ms: float = 1.0, challenger_ms: float = 1.2) -> ShadowStats:
    return ShadowStats(
        samples=200,
        agreement=agreement,
        seconds=5.0,
        champion=RunStats(p95_latency_ms=champion_ms),
        challenger=RunStats(p95_latency_ms=challenger_ms),
    )


def make_fleet(
    ctl: Controller,
    bundles: dict[str, Path],
    key: Ed25519PrivateKey,
    work: Path,
    devices: int = 20,
    *,
    deployed: bool = True,
) -> Fleet:
    """``devices`` presses on 1.0.0 by deployment (or, ``deployed=False``, provisioned by hand: they
    report 1.0.0 and no deployment says so), one lathe outside the group, 2.0.0 uploaded."""
    names = [f"press-{i:02d}" for i in range(devices)]
    v2 = rebundle(bundles["onnx-int8"], work / "v2", key, version=NEW, drift_reference=None)
    manifests = {}
    with ctl.client("operator") as client:
        assert client.post("/api/v1/sites", json={"id": "site-a"}).status_code == 201
        for name in [*names, "lathe-0"]:
            line = "lathe" if name.startswith("lathe") else "press"
            response = client.post(
                "/api/v1/devices", json={"id": name, "site_id": "site-a", "labels": {"line": line}}
            )
            assert response.status_code == 201, response.text
        for version, source in ((OLD, bundles["onnx-int8"]), (NEW, v2)):
            response = client.post("/api/v1/bundles", content=pack(source).read_bytes())
            assert response.status_code == 201, response.text
            manifests[version] = response.json()["manifest_sha256"]
        group = client.post("/api/v1/groups", json={"name": "presses", "selector": {"line": "press"}}).json()
        if deployed:
            answer = client.post(
                "/api/v1/deployments", json={"group_id": group["id"], "model_id": MODEL, "version": OLD}
            )
            assert answer.status_code == 201, answer.text
    fleet = Fleet(ctl, names, group["id"], manifests)
    fleet.report(names, None, None)
    return fleet


def on(states: dict[str, dict[str, Any]], version: str) -> set[str]:
    """The devices whose desired state names ``version``."""
    return {d for d, s in states.items() if s["model"] is not None and s["model"]["version"] == version}


def actions(status: dict[str, Any]) -> list[str]:
    """The decisions' actions but holds: what moved the rollout."""
    return [d["action"] for d in status["decisions"] if d["action"] != "hold"]
