"""A fleet for job tests, played through the real API, and a real `cloud-controller worker` process.

Devices of group "presses" run sensor-mlp 1.0.0 by deployment, a deliberately bad production model
(trained on shifted labels: it is right almost never). Their gateway ingests records with features
and, later, their labels (`IngestBatch` v4), as the real gateway sends them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.sources.synthetic import make_dataset
from fleet_learning.recipes import Hyperparameters, default_recipe
from fleet_protocol import TelemetryRecord
from fleet_protocol.ingest import IngestBatch
from fleet_protocol.labels import DeviceLabels, Label
from fleet_protocol.signing import private_key_pem
from model_compiler.archive import pack
from tests.controller.conftest import Controller

MODEL = "sensor-mlp"
DEVICES = [f"press-{i:02d}" for i in range(6)]


@dataclass
class JobFleet:
    ctl: Controller
    key_file: Path
    job_dir: Path
    log_dir: Path

    def client(self, role: str | None = "operator") -> httpx.Client:
        return self.ctl.client(role)

    def start_job(self, kind: str = "retrain", **params: Any) -> dict[str, Any]:
        with self.client() as client:
            response = client.post("/api/v1/jobs", json={"kind": kind, "model_id": MODEL, "params": params})
        assert response.status_code == 201, response.text
        return response.json()

    def job(self, job_id: str) -> dict[str, Any]:
        with self.client("viewer") as client:
            response = client.get(f"/api/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def wait(
        self, job_id: str, done: Callable[[dict[str, Any]], bool], timeout_s: float = 120
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.job(job_id)
            if done(job):
                return job
            assert time.monotonic() < deadline, f"job never got there: {job['state']} at {job['step']}"
            time.sleep(0.2)

    def worker(self, name: str, *extra: str, job_dir: Path | None = None) -> subprocess.Popen[bytes]:
        """A `cloud-controller worker` process; workers share one job directory unless told."""
        env = {
            **self.ctl.env,
            "EDGEFLEET_CONTROLLER__SIGNING_KEY": str(self.key_file),
            "EDGEFLEET_CONTROLLER__JOB_DIR": str(job_dir or self.job_dir),
        }
        log = (self.log_dir / f"{name}.log").open("ab")
        return subprocess.Popen(
            [sys.executable, "-m", "cloud_controller.cli", "worker", "--id", name, "--poll", "0.2", *extra],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def worker_log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text()

    def production(self) -> list[str]:
        with self.client("viewer") as client:
            versions = client.get("/api/v1/models/versions", params={"model_id": MODEL}).json()
        return [v["version"] for v in versions if v["stage"] == "production"]

    def versions(self) -> dict[str, dict[str, Any]]:
        with self.client("viewer") as client:
            return {
                v["version"]: v
                for v in client.get("/api/v1/models/versions", params={"model_id": MODEL}).json()
            }

    def ingest(self, n: int, *, seed: int = 1, first_seq: int = 1, labelled: float = 1.0) -> None:
        """``n`` records with features over the devices, and labels for a share of them."""
        x, y = make_dataset(n, seed=seed)
        now = time.time()
        records, labels = [], {d: [] for d in DEVICES}
        for i in range(n):
            device, seq = DEVICES[i % len(DEVICES)], first_seq + i // len(DEVICES)
            records.append(
                TelemetryRecord(
                    device_id=device,
                    seq=seq,
                    ts=now - 60 + i * 1e-3,
                    model_id=MODEL,
                    model_version="1.0.0",
                    outputs=[0.0, 0.0, 0.0, 0.0],
                    predicted=0,
                    features=x[i].tolist(),
                )
            )
            if (i * 0.618) % 1 < labelled:
                labels[device].append(Label(seq=seq, label=int(y[i]), labelled_at=now))
        for start in range(0, n, 1000):
            batch = IngestBatch(
                site="site-a",
                gateway_id="gw-1",
                batch_id=uuid.uuid4().hex,
                records=records[start : start + 1000],
            )
            self._post(batch)
        self._post(
            IngestBatch(
                site="site-a",
                gateway_id="gw-1",
                batch_id=uuid.uuid4().hex,
                labels=[DeviceLabels(device_id=d, labels=ls) for d, ls in labels.items() if ls],
            )
        )

    def _post(self, batch: IngestBatch) -> None:
        with self.client("gateway") as gateway:
            response = gateway.post("/api/v1/ingest", content=batch.model_dump_json())
        assert response.status_code == 200, response.text


_BAD: dict[int, dict[str, Path]] = {}


def bad_bundles(key: Ed25519PrivateKey) -> dict[str, Path]:
    """Signed bundles of a model trained on labels shifted by one class: right almost never.

    Made once per test process and key (a few seconds).
    """
    if id(key) not in _BAD:
        _BAD[id(key)] = _make_bad_bundles(Path(tempfile.mkdtemp(prefix="bad-model-")), key)
    return _BAD[id(key)]


def _make_bad_bundles(work: Path, key: Ed25519PrivateKey) -> dict[str, Path]:
    import torch

    from fleet_protocol import Runtime
    from model_compiler.bundle import write_bundle
    from simulators.model_factory import MLP, TrainedModel, export_onnx, manifest_fields

    torch.manual_seed(0)
    x, y = make_dataset(2000, seed=7)
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    model = MLP()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    xs, ys = torch.from_numpy((x - mean) / scale), torch.from_numpy((y + 1) % 4)
    for _ in range(100):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(xs), ys).backward()
        optimizer.step()
    model.eval()
    trained = TrainedModel(model, mean.astype(np.float32), scale.astype(np.float32), 0.0, x, y, x)
    work.mkdir(parents=True, exist_ok=True)
    onnx = export_onnx(trained, work / "model.onnx")
    fields = manifest_fields(
        trained, model_id=MODEL, version="1.0.0", runtime=Runtime.ONNXRUNTIME, entrypoint="model.onnx"
    )
    write_bundle(work / "onnx-fp32", {"model.onnx": onnx}, key, **fields)
    return {"onnx-fp32": work / "onnx-fp32"}


def make_job_fleet(ctl: Controller, key: Ed25519PrivateKey, work: Path, *, epochs: int = 10) -> JobFleet:
    """Site, devices, group "presses" deployed on a bad 1.0.0 in production, and the model's recipe."""
    key_file = work / "signing.pem"
    key_file.write_bytes(private_key_pem(key))
    bundles = bad_bundles(key)
    recipe = default_recipe().model_copy(
        update={"hyperparameters": Hyperparameters(epochs=epochs, batch_size=128, lr=0.01)}
    )
    with ctl.client("operator") as client:
        assert client.post("/api/v1/sites", json={"id": "site-a"}).status_code == 201
        for name in DEVICES:
            response = client.post(
                "/api/v1/devices", json={"id": name, "site_id": "site-a", "labels": {"line": "press"}}
            )
            assert response.status_code == 201, response.text
        uploaded = client.post("/api/v1/bundles", content=pack(bundles["onnx-fp32"]).read_bytes())
        assert uploaded.status_code == 201, uploaded.text
        version_id = uploaded.json()["model_version_id"]
        staged = client.patch(f"/api/v1/models/versions/{version_id}", json={"stage": "production"})
        assert staged.status_code == 200, staged.text
        group = client.post("/api/v1/groups", json={"name": "presses", "selector": {"line": "press"}}).json()
        deployed = client.post(
            "/api/v1/deployments", json={"group_id": group["id"], "model_id": MODEL, "version": "1.0.0"}
        )
        assert deployed.status_code == 201, deployed.text
        response = client.put(f"/api/v1/models/{MODEL}/recipe", json=recipe.model_dump(mode="json"))
        assert response.status_code == 200, response.text
    (work / "logs").mkdir(exist_ok=True)
    return JobFleet(ctl, key_file, work / "jobs", work / "logs")


def kill(process: subprocess.Popen[bytes]) -> None:
    """kill -9 of the worker (and anything it started)."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            kill(process)
