"""Retraining jobs end to end: a real controller, a real `cloud-controller worker`, data through the API."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleet_protocol import MANIFEST_FILE, BundleManifest
from fleet_protocol.signing import load_public_key, verify_bundle
from tests.controller.conftest import database_url, start_controller
from tests.controller.test_jobs_fleet import MODEL, JobFleet, make_job_fleet, stop


def _fleet(kind: str, tmp_path: Path, public_key_file: Path, key: Ed25519PrivateKey) -> Iterator[JobFleet]:
    for url in database_url(kind, tmp_path):
        process, ctl = start_controller(tmp_path, url, public_key_file)
        try:
            yield make_job_fleet(ctl, key, tmp_path)
        finally:
            process.terminate()
            process.wait(10)


@pytest.fixture
def sqlite_fleet(tmp_path: Path, public_key_file: Path, signing_key: Ed25519PrivateKey) -> Iterator[JobFleet]:
    yield from _fleet("sqlite", tmp_path, public_key_file, signing_key)


@pytest.fixture
def pg_fleet(
    tmp_path: Path, public_key_file: Path, signing_key: Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> Iterator[JobFleet]:
    # The alarm evaluator passes often enough for an alarm to fire within the test.
    monkeypatch.setenv("EDGEFLEET_CONTROLLER__ALARM_TICK_S", "0.2")
    yield from _fleet("postgres", tmp_path, public_key_file, signing_key)


@pytest.mark.slow
def test_retrain_job_rolls_out_a_signed_candidate_that_beats_production(
    sqlite_fleet: JobFleet, public_key_file: Path
) -> None:
    fleet = sqlite_fleet
    fleet.ingest(600)
    job = fleet.start_job(min_samples=300, waves=[{"percent": 50}, {"percent": 100}])
    worker = fleet.worker("w1")
    try:
        done = fleet.wait(job["id"], lambda j: j["state"] not in ("queued", "running"))
    finally:
        stop(worker)

    assert done["state"] == "succeeded", (done["error"], [s["log"] for s in done["steps"]])
    assert [s["state"] for s in done["steps"]] == ["succeeded"] * 6
    data, evaluation = done["artifacts"]["dataset"], done["artifacts"]["evaluate"]
    assert data["records"] == 600 and data["train"] + data["heldout"] == 600
    assert evaluation["production_version"] == "1.0.0"
    assert evaluation["candidate_accuracy"] >= evaluation["production_accuracy"] + 0.02
    assert evaluation["candidate_accuracy"] > 0.9 and evaluation["production_accuracy"] < 0.2
    # The candidate: registered with lineage, its bundles signed by the controller's key.
    versions = fleet.versions()
    candidate = versions["1.0.1"]
    assert (candidate["stage"], candidate["parent"]) == ("candidate", f"{MODEL}@1.0.0")
    lineage = candidate["metrics"]["lineage"]
    assert lineage["job_id"] == job["id"] and lineage["records"] == 600
    assert (
        lineage["data_window"] == data["window"] and lineage["training_data_sha256"] == data["train_sha256"]
    )
    assert versions["1.0.0"]["stage"] == "production"
    sha = done["artifacts"]["register"]["bundles"][0]
    with fleet.client("viewer") as client:
        archive = client.get(f"/api/v1/bundles/{sha}").content
    unpacked = fleet.job_dir.parent / "downloaded"
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(unpacked, filter="data")
    manifest = verify_bundle(unpacked, [load_public_key(public_key_file)])
    assert (manifest.version, manifest.lineage.parent) == ("1.0.1", f"{MODEL}@1.0.0")
    assert BundleManifest.model_validate_json((unpacked / MANIFEST_FILE).read_bytes()).model_id == MODEL
    # The rollout: to the group that runs production, in the job's waves.
    rollout_id = done["artifacts"]["rollout"]["rollout_id"]
    with fleet.client("viewer") as client:
        rollout = client.get(f"/api/v1/rollouts/{rollout_id}").json()
    assert (rollout["version"], rollout["group"], rollout["state"]) == ("1.0.1", "presses", "running")
    assert rollout["previous"] == {"model_id": MODEL, "version": "1.0.0"}
    assert done["outcome"] == f"{MODEL}@1.0.1 rolling out to group presses as {rollout_id}"
    # The CLI shows the same job.
    shown = fleet.ctl.cli(
        "job", "status", job["id"], "--url", fleet.ctl.url, "--token", fleet.ctl.tokens["viewer"]
    )
    assert shown.returncode == 0, shown.stderr
    assert "succeeded" in shown.stdout and rollout_id in shown.stdout
    with fleet.client(None) as browser:
        browser.cookies.set("edgefleet_token", fleet.ctl.tokens["viewer"])
        page = browser.get(f"/jobs/{job['id']}").text
    assert f"candidate {evaluation['candidate_accuracy'] * 100:.1f} % against production 1.0.0" in page
    assert f"{rollout_id} to group presses" in page


@pytest.mark.slow
def test_alarm_job_with_too_little_labelled_data_fails_at_dataset(pg_fleet: JobFleet) -> None:
    fleet = pg_fleet
    with fleet.client() as client:
        policy = {"accuracy_floor": 0.8, "psi_threshold": None, "min_samples": 30, "action": "auto"}
        response = client.put(f"/api/v1/models/{MODEL}/alarm-policy", json=policy)
        assert response.status_code == 200, response.text
    # The devices predicted class 0 for every record: labels make their accuracy low; the alarm fires.
    fleet.ingest(120)
    alarm = _wait_for_alarm(fleet)
    worker = fleet.worker("w1")
    try:
        alarm = _wait_for_alarm(fleet, lambda a: a["job_id"] is not None)
        done = fleet.wait(alarm["job_id"], lambda j: j["state"] not in ("queued", "running"))
    finally:
        stop(worker)

    assert (done["trigger"], done["state"], done["step"]) == ("alarm", "failed", "dataset")
    assert done["trigger_ref"].startswith(f"alarm {alarm['id']}: accuracy at site-a")
    assert done["error"].startswith(
        "dataset: not enough labelled data (120 < 200): labelled records of sensor-mlp with features from "
    )
    assert [s["state"] for s in done["steps"]] == [
        "failed",
        "pending",
        "pending",
        "pending",
        "pending",
        "pending",
    ]
    assert "not enough labelled data (120 < 200)" in done["steps"][0]["log"][-1]
    assert set(fleet.versions()) == {"1.0.0"} and fleet.production() == ["1.0.0"]
    with fleet.client("viewer") as client:
        assert client.get("/api/v1/rollouts").json()["count"] == 0


def _wait_for_alarm(fleet: JobFleet, ok: object = None) -> dict[str, object]:
    import time

    deadline = time.monotonic() + 30
    while True:
        with fleet.client("viewer") as client:
            alarms = client.get("/api/v1/alarms", params={"model_id": MODEL, "state": "open"}).json()["data"]
        found = [a for a in alarms if a["kind"] == "accuracy" and (ok is None or ok(a))]  # type: ignore[operator]
        if found:
            return found[0]
        assert time.monotonic() < deadline, f"no such alarm: {alarms}"
        time.sleep(0.2)


def test_jobs_api_refuses_what_it_cannot_run(sqlite_fleet: JobFleet) -> None:
    fleet = sqlite_fleet
    with fleet.client() as client:
        bad = client.post("/api/v1/jobs", json={"model_id": MODEL, "params": {"margin": 2}})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "params", "margin"]
        unknown = client.post("/api/v1/jobs", json={"model_id": MODEL, "params": {"epochz": 3}})
        assert unknown.status_code == 422
        federated = client.post(
            "/api/v1/jobs",
            json={"kind": "federated", "model_id": MODEL, "params": {"federated": {"strategy": "krum?"}}},
        )
        assert federated.status_code == 422
        assert federated.json()["detail"][0]["loc"] == ["body", "params", "federated", "strategy"]
        norecipe = client.post("/api/v1/jobs", json={"model_id": "other"})
        assert norecipe.status_code == 404
        assert (
            norecipe.json()["detail"]
            == "Model other has no training recipe: PUT /api/v1/models/other/recipe first"
        )
        assert client.get("/api/v1/jobs/j-00000000").json() == {"detail": "Job j-00000000 not found"}
        assert client.post("/api/v1/jobs/j-00000000/cancel").status_code == 404
        recipe = client.put(f"/api/v1/models/{MODEL}/recipe", json={"entry_point": "nope"})
        assert recipe.status_code == 422 and recipe.json()["detail"].startswith("Not a training recipe:")
        assert client.get("/api/v1/models/other/recipe").json() == {
            "detail": "Model other has no training recipe"
        }
    with fleet.client("viewer") as viewer:
        assert viewer.post("/api/v1/jobs", json={"model_id": MODEL}).status_code == 403
        assert viewer.get(f"/api/v1/models/{MODEL}/recipe").json()["recipe"]["entry_point"] == (
            "fleet_learning.models:mlp"
        )
    # Cancelled while queued: at once, by the CLI; a second cancel is refused with the reason.
    job = fleet.start_job()
    args = ("--url", fleet.ctl.url, "--token", fleet.ctl.tokens["operator"])
    cancelled = fleet.ctl.cli("job", "cancel", job["id"], *args)
    assert cancelled.returncode == 0 and f"job {job['id']} cancelled" in cancelled.stdout
    again = fleet.ctl.cli("job", "cancel", job["id"], *args)
    assert again.returncode == 1
    assert f"409: Job {job['id']} is cancelled: only a queued or running job can be cancelled" in again.stderr
    shown = fleet.job(job["id"])
    assert shown["state"] == "cancelled" and {s["state"] for s in shown["steps"]} == {"cancelled"}
    # The dashboard and /metrics show it.
    with fleet.client(None) as browser:
        browser.cookies.set("edgefleet_token", fleet.ctl.tokens["viewer"])
        listing = browser.get("/jobs")
        assert listing.status_code == 200 and f'href="/jobs/{job["id"]}"' in listing.text
        page = browser.get(f"/jobs/{job['id']}")
        assert page.status_code == 200 and "cancelled by operator:test-operator" in page.text
        assert browser.get("/jobs/j-00000000").status_code == 404
        metrics = browser.get("/metrics").text
    assert 'edgefleet_jobs{kind="retrain",state="cancelled"} 1.0' in metrics
    assert 'edgefleet_jobs{kind="retrain",state="running"} 0.0' in metrics


def test_federated_params_publish_every_setting_of_fleet_learning_federated_config() -> None:
    """The API's FederatedParams mirrors FederatedConfig (the API process does not import
    fleet_learning): same fields, same types, same defaults, and each converts into the other."""
    from cloud_controller.job_models import FederatedParams
    from fleet_learning.config import FederatedConfig

    ours, theirs = FederatedParams.model_json_schema(), FederatedConfig.model_json_schema()

    def shape(schema: dict[str, Any]) -> dict[str, Any]:
        def kind(prop: dict[str, Any]) -> Any:
            return prop.get("type") or sorted(str(p.get("type")) for p in prop.get("anyOf", []))

        return {name: (kind(p), p.get("default"), p.get("enum")) for name, p in schema["properties"].items()}

    assert shape(ours) == shape(theirs)
    FederatedConfig.model_validate(FederatedParams(strategy="fedprox", mu=0.1, rounds=5).model_dump())


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_schedule_makes_one_job_per_period_however_many_workers_ask(tmp_path: Path, kind: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from cloud_controller import jobs
    from cloud_controller.db import make_engine
    from cloud_controller.migrate import upgrade

    for url in database_url(kind, tmp_path):
        upgrade(url)
        engines = [make_engine(url) for _ in range(4)]  # four workers' connections
        try:

            def ask(engine_and_now: tuple[Any, float]) -> str | None:
                engine, now = engine_and_now
                return jobs.start_scheduled(engine, MODEL, 3600, actor="worker:w", now=now)

            with ThreadPoolExecutor(4) as pool:
                first = list(pool.map(ask, [(e, 7300.0) for e in engines]))
                later = list(pool.map(ask, [(e, 7300.0 + 3600) for e in engines]))
            made = [j for j in first + later if j is not None]
            assert len(made) == 2 and made[0] != made[1]
            from sqlmodel import Session

            with Session(engines[0]) as session:
                job = jobs.get(session, made[0])
                assert (job.trigger, job.trigger_ref, job.state) == (
                    "schedule",
                    "every 3600 s, period 2",
                    "queued",
                )
        finally:
            for engine in engines:
                engine.dispose()


def test_worker_refuses_a_schedule_it_cannot_read() -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "cloud_controller.cli", "worker", "--schedule", "sensor-mlp=daily"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--schedule 'sensor-mlp=daily': expected MODEL=SECONDS, e.g. sensor-mlp=86400" in result.stderr
