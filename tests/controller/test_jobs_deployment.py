"""Federated jobs on Flower's deployment engine: a real controller and `cloud-controller worker`, and a
real federation of processes over TLS (a SuperLink with a certificate of a fleet CA, two device
SuperNodes each reading its agent's training buffer). The worker submits edgefleet's Flower App to the
SuperLink with `flwr run` and follows the run; the devices train on their own samples.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleet_learning.local_data import write_buffer
from fleet_learning.recipes import default_recipe
from tests.controller.conftest import database_url, start_controller
from tests.controller.test_jobs_fleet import MODEL, JobFleet, make_job_fleet, stop
from tests.learning.data import sensor_data
from tests.learning.flower_processes import Federation, free_port

pytestmark = pytest.mark.slow

#: Labelled samples in each device's training buffer; a fifth is kept for its local evaluation.
BUFFER = 1500
ENDED = ("succeeded", "failed", "cancelled")


@dataclass
class Setup:
    fleet: JobFleet
    federation: Federation

    def params(self, **federated: Any) -> dict[str, Any]:
        """A deployment-engine job's params: the federation's SuperLink, verified with the fleet CA."""
        assert self.federation.tls is not None
        return {
            "min_samples": 300,
            "rollout": False,
            "federated": {
                "engine": "deployment",
                "federation": {
                    "superlink": f"127.0.0.1:{self.federation.port}",
                    "ca_file": str(self.federation.tls["ca"]),
                },
                **federated,
            },
        }

    def ended(self, job_id: str, timeout_s: float = 240) -> dict[str, Any]:
        return self.fleet.wait(job_id, lambda j: j["state"] in ENDED, timeout_s=timeout_s)

    def runs(self) -> dict[str, str]:
        """Every run the SuperLink knows, by id: its status."""
        listing = self.federation.flwr("ls", "edgefleet", "--format", "json", timeout=60)
        return {r["run-id"]: r["status"] for r in json.loads(listing.stdout)["runs"]}


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory, public_key_file: Path, signing_key: Ed25519PrivateKey
) -> Iterator[Setup]:
    """Presses on a bad production 1.0.0 with 600 labelled records uploaded, a worker, and a federation
    whose two devices (site-a) keep their own labelled samples in their training buffers."""
    tmp = tmp_path_factory.mktemp("fl-deploy")
    federation = Federation(tmp / "federation")
    try:
        federation.start_superlink()
        recipe = default_recipe()
        for i in range(2):
            x, y = sensor_data(BUFFER, seed=60 + i)
            buffer = write_buffer(tmp / f"press-0{i}" / "training.sqlite", recipe.feature_names, x, y)
            federation.start_supernode(f"press-0{i}", {"buffer-path": str(buffer), "site": "site-a"})
        for url in database_url("sqlite", tmp):
            process, ctl = start_controller(tmp, url, public_key_file)
            try:
                fleet = make_job_fleet(ctl, signing_key, tmp)
                fleet.ingest(600)
                worker = fleet.worker("w-fl", "--no-alarms")
                try:
                    yield Setup(fleet, federation)
                finally:
                    stop(worker)
            finally:
                process.terminate()
                process.wait(10)
    finally:
        left = federation.stop()
        assert not left, f"processes survived the federation: {left}"


def test_deployment_job_trains_on_the_devices_and_registers_a_candidate_naming_its_rounds(
    setup: Setup,
) -> None:
    job = setup.fleet.start_job(
        "federated",
        **setup.params(
            rounds=2, min_clients=2, local_epochs=2, round_timeout_s=90, federated_evaluation=False
        ),
    )
    done = setup.ended(job["id"])

    assert done["state"] == "succeeded", (done["error"], [s["log"] for s in done["steps"]])
    train = done["artifacts"]["train"]
    assert (train["mode"], train["engine"], train["tls"]) == ("federated", "deployment", True)
    assert train["superlink"] == f"127.0.0.1:{setup.federation.port}"
    assert (train["clients"], train["rounds"]) == (2, 2)
    # Trained on the devices' buffers (their training splits), not on the records uploaded.
    assert train["samples"] == 2 * BUFFER * 4 // 5
    assert train["final_accuracy"] > train["initial_accuracy"]
    assert setup.runs()[train["run_id"]] == "finished:completed"
    log = "\n".join(done["steps"][1]["log"])
    assert f"run {train['run_id']} submitted to SuperLink 127.0.0.1:{setup.federation.port}" in log
    assert "TLS verified with CA" in log and "INSECURE" not in log
    # Each round recorded, with the clients that took part.
    rounds = done["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert all((r["sampled"], r["responded"], r["failed"], r["declined"]) == (2, 2, 0, 0) for r in rounds)
    assert all(r["accuracy"] is not None and r["seconds"] > 0 for r in rounds)
    # build, evaluate and register as for any job; production stays (rollout: false).
    assert [s["state"] for s in done["steps"]] == ["succeeded"] * 5 + ["skipped"]
    version = done["artifacts"]["register"]["version"]
    lineage = setup.fleet.versions()[version]["metrics"]["lineage"]
    assert (lineage["kind"], lineage["job_id"], lineage["fl_rounds"]) == ("federated", job["id"], 2)
    assert (lineage["fl_engine"], lineage["fl_run_id"]) == ("deployment", train["run_id"])
    assert lineage["fl_superlink"] == f"127.0.0.1:{setup.federation.port}"
    assert setup.fleet.production() == ["1.0.0"]
    with setup.fleet.client(None) as browser:
        browser.cookies.set("edgefleet_token", setup.fleet.ctl.tokens["viewer"])
        page = browser.get(f"/jobs/{job['id']}").text
    assert f"on SuperLink 127.0.0.1:{setup.federation.port}, run {train['run_id']}" in page


def test_a_cancelled_deployment_job_stops_its_run_on_the_superlink(setup: Setup) -> None:
    # Three clients asked of a federation of two: the run waits for a third until it is stopped.
    job = setup.fleet.start_job("federated", **setup.params(min_clients=3, round_timeout_s=600))
    running = setup.fleet.wait(job["id"], lambda j: "submitted to SuperLink" in "".join(j["steps"][1]["log"]))
    run_id = re.search(r"run (\d+) submitted", "".join(running["steps"][1]["log"]))
    assert run_id is not None
    with setup.fleet.client() as client:
        assert client.post(f"/api/v1/jobs/{job['id']}/cancel").status_code == 200
    done = setup.ended(job["id"], timeout_s=90)

    assert (done["state"], done["step"]) == ("cancelled", "train")
    assert setup.runs()[run_id.group(1)] == "finished:stopped"
    assert setup.fleet.production() == ["1.0.0"]


def test_an_unreachable_superlink_fails_the_job_at_train_and_leaves_production(setup: Setup) -> None:
    before = set(setup.fleet.versions())
    params = setup.params(rounds=1)
    params["federated"]["federation"]["superlink"] = f"127.0.0.1:{free_port()}"  # nothing listens there
    job = setup.fleet.start_job("federated", **params)
    done = setup.ended(job["id"], timeout_s=180)

    assert (done["state"], done["step"]) == ("failed", "train")
    address = params["federated"]["federation"]["superlink"]
    assert done["error"].startswith(f"train: federated training on SuperLink {address} failed: flwr run")
    assert "Connection to the SuperLink is unavailable" in done["error"]
    assert done["outcome"] == "failed at train; production untouched"
    assert done["rounds"] == []
    assert set(setup.fleet.versions()) == before and setup.fleet.production() == ["1.0.0"]


def test_the_api_refuses_a_deployment_job_it_could_not_run(setup: Setup) -> None:
    def refused(federated: dict[str, Any]) -> str:
        body = {"kind": "federated", "model_id": MODEL, "params": {"federated": federated}}
        with setup.fleet.client() as client:
            response = client.post("/api/v1/jobs", json=body)
        assert response.status_code == 422, response.text
        return " | ".join(e["msg"] for e in response.json()["detail"])

    assert "engine deployment needs federation" in refused({"engine": "deployment"})
    assert "federation is for engine deployment" in refused(
        {"federation": {"superlink": "fl:9093", "insecure": True}}
    )
    assert "ca_file is needed" in refused({"engine": "deployment", "federation": {"superlink": "fl:9093"}})
    assert "is not host:port" in refused(
        {"engine": "deployment", "federation": {"superlink": "fl", "ca_file": "/ca.pem"}}
    )
    assert "absolute path" in refused(
        {"engine": "deployment", "federation": {"superlink": "fl:9093", "ca_file": 'ca.pem"\nx'}}
    )
    assert "not both" in refused(
        {"engine": "deployment", "federation": {"superlink": "fl:1", "ca_file": "/ca.pem", "insecure": True}}
    )
