"""Retraining jobs end to end: a real controller on SQLite, a real `cloud-controller worker`, data
ingested through the API; the tests of this file share one fleet and one worker (a worker process
and its imports cost seconds), each test starts and follows jobs of its own."""

from __future__ import annotations

import io
import re
import subprocess
import sys
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

ENDED = ("succeeded", "failed", "cancelled")


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, public_key_file: Path, signing_key: Ed25519PrivateKey
) -> Iterator[JobFleet]:
    """Presses on a bad production 1.0.0, 600 labelled records of theirs ingested, a worker running."""
    tmp = tmp_path_factory.mktemp("jobs")
    for url in database_url("sqlite", tmp):
        process, ctl = start_controller(tmp, url, public_key_file)
        try:
            fleet = make_job_fleet(ctl, signing_key, tmp)
            fleet.ingest(600)
            worker = fleet.worker("w1")
            try:
                yield fleet
            finally:
                stop(worker)
        finally:
            process.terminate()
            process.wait(10)


def _ended(fleet: JobFleet, job_id: str, timeout_s: float = 180) -> dict[str, Any]:
    return fleet.wait(job_id, lambda j: j["state"] in ENDED, timeout_s=timeout_s)


@pytest.mark.slow
def test_retrain_job_rolls_out_a_signed_candidate_that_beats_production(
    fleet: JobFleet, public_key_file: Path
) -> None:
    job = fleet.start_job(min_samples=300, waves=[{"percent": 50}, {"percent": 100}])
    done = _ended(fleet, job["id"])

    assert done["state"] == "succeeded", (done["error"], [s["log"] for s in done["steps"]])
    assert [s["state"] for s in done["steps"]] == ["succeeded"] * 6
    data, evaluation = done["artifacts"]["dataset"], done["artifacts"]["evaluate"]
    assert data["records"] == 600 and data["train"] + data["validation"] + data["heldout"] == 600
    assert evaluation["heldout"] == data["heldout"] and evaluation["validation"] == data["validation"]
    assert evaluation["production_version"] == "1.0.0"
    assert evaluation["candidate_accuracy"] >= evaluation["production_accuracy"] + 0.02
    assert evaluation["candidate_accuracy"] > 0.9 and evaluation["production_accuracy"] < 0.2
    # The candidate: registered with lineage, its bundles signed by the controller's key.
    version = done["artifacts"]["register"]["version"]
    versions = fleet.versions()
    candidate = versions[version]
    assert (candidate["stage"], candidate["parent"]) == ("candidate", f"{MODEL}@1.0.0")
    lineage = candidate["metrics"]["lineage"]
    assert (lineage["job_id"], lineage["records"], lineage["fl_rounds"]) == (job["id"], 600, 0)
    assert lineage["data_window"] == data["window"]
    assert lineage["training_data_sha256"] == data["train_sha256"]
    assert (lineage["validation_records"], lineage["heldout_records"]) == (
        data["validation"],
        data["heldout"],
    )
    assert versions["1.0.0"]["stage"] == "production"
    sha = done["artifacts"]["register"]["bundles"][0]
    with fleet.client("viewer") as client:
        archive = client.get(f"/api/v1/bundles/{sha}").content
    unpacked = fleet.job_dir.parent / f"downloaded-{job['id']}"
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(unpacked, filter="data")
    manifest = verify_bundle(unpacked, [load_public_key(public_key_file)])
    assert (manifest.version, manifest.lineage.parent) == (version, f"{MODEL}@1.0.0")
    assert BundleManifest.model_validate_json((unpacked / MANIFEST_FILE).read_bytes()).model_id == MODEL
    # The rollout: no group named, so to the group whose deployment is production, in the job's waves.
    rollout_id = done["artifacts"]["rollout"]["rollout_id"]
    with fleet.client("viewer") as client:
        rollout = client.get(f"/api/v1/rollouts/{rollout_id}").json()
    assert (rollout["version"], rollout["group"], rollout["state"]) == (version, "presses", "running")
    assert rollout["previous"] == {"model_id": MODEL, "version": "1.0.0"}
    assert done["artifacts"]["rollout"]["waves"] == [{"percent": 50.0}, {"percent": 100.0}]
    assert [w["target"] for w in rollout["waves"]] == [3, 6]
    assert done["outcome"] == f"{MODEL}@{version} rolling out to group presses as {rollout_id}"
    # The CLI and the dashboard show the same job.
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
def test_a_candidate_short_of_the_margin_is_registered_and_not_rolled_out(fleet: JobFleet) -> None:
    with fleet.client("viewer") as client:
        rollouts_before = client.get("/api/v1/rollouts").json()["count"]
    # One epoch: short of perfect, so short of the 100 points over the (always wrong) production model.
    job = fleet.start_job(min_samples=300, epochs=1, margin=1.0)
    done = _ended(fleet, job["id"])

    assert done["state"] == "succeeded", (done["error"], [s["log"] for s in done["steps"]])
    evaluation, version = done["artifacts"]["evaluate"], done["artifacts"]["register"]["version"]
    reason = (
        f"candidate did not beat production ({evaluation['candidate_accuracy']:.4f} vs "
        f"{evaluation['production_accuracy']:.4f}, margin 1): production 1.0.0 stays"
    )
    assert done["steps"][-1]["state"] == "skipped" and done["outcome"] == reason
    assert reason in done["steps"][-1]["log"][-1]
    assert fleet.versions()[version]["stage"] == "candidate" and fleet.production() == ["1.0.0"]
    with fleet.client("viewer") as client:
        assert client.get("/api/v1/rollouts").json()["count"] == rollouts_before


@pytest.mark.slow
def test_federated_job_records_its_rounds_and_registers_the_candidate_with_them(fleet: JobFleet) -> None:
    federated = {"strategy": "fedavg", "rounds": 2, "min_clients": 2, "local_epochs": 2}
    job = fleet.start_job("federated", min_samples=300, rollout=False, federated=federated)
    done = _ended(fleet, job["id"], timeout_s=300)

    assert done["state"] == "succeeded", (done["error"], [s["log"] for s in done["steps"]])
    train = done["artifacts"]["train"]
    assert (train["mode"], train["clients"], train["rounds"]) == ("federated", 6, 2)
    rounds = done["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert all((r["sampled"], r["responded"], r["failed"]) == (6, 6, 0) for r in rounds)
    assert rounds[-1]["accuracy"] > 0.8 and rounds[-1]["loss"] is not None
    version = done["artifacts"]["register"]["version"]
    lineage = fleet.versions()[version]["metrics"]["lineage"]
    assert (lineage["kind"], lineage["fl_rounds"], lineage["job_id"]) == ("federated", 2, job["id"])
    assert done["steps"][-1]["state"] == "skipped"
    assert done["outcome"] == f"the job's params say rollout: false: {version} stays a candidate"
    with fleet.client(None) as browser:
        browser.cookies.set("edgefleet_token", fleet.ctl.tokens["viewer"])
        page = browser.get(f"/jobs/{job['id']}").text
    assert "Accuracy per round" in page and "Clients per round" in page and ">round</text>" in page


@pytest.mark.slow
def test_a_job_cancelled_while_it_trains_stops_there_and_production_stays(fleet: JobFleet) -> None:
    before = set(fleet.versions())
    job = fleet.start_job(min_samples=300, epochs=10_000)
    fleet.wait(job["id"], lambda j: j["step"] == "train" and len(j["steps"][1]["log"]) >= 1)
    # The dashboard's cancel button, as an operator.
    with fleet.client(None) as browser:
        browser.cookies.set("edgefleet_token", fleet.ctl.tokens["operator"])
        asked = browser.post(f"/jobs/{job['id']}/cancel")
    assert (asked.status_code, asked.headers["location"]) == (303, f"/jobs/{job['id']}")
    assert fleet.job(job["id"])["cancel_requested"] is True
    done = _ended(fleet, job["id"], timeout_s=60)

    assert (done["state"], done["step"], done["error"]) == ("cancelled", "train", "cancelled while running")
    assert [s["state"] for s in done["steps"]] == ["succeeded"] + ["cancelled"] * 5
    epochs = [line for line in done["steps"][1]["log"] if "epoch " in line]
    assert len(epochs) < 10_000 // 5, "training stopped long before its end"
    assert set(fleet.versions()) == before and fleet.production() == ["1.0.0"]


def test_a_federated_job_picks_its_round_on_validation_and_only_evaluate_reads_the_test_split(
    fleet: JobFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The best round is chosen, and the input scaling fitted, on records the margin check never sees."""
    import numpy as np

    import fleet_learning.federated
    from cloud_controller.db import make_engine
    from cloud_controller.job_models import JobParams
    from cloud_controller.pipeline.base import Signals, StepContext, StepFailed
    from cloud_controller.pipeline.dataset import TRAIN, VALIDATION, DatasetStep, load
    from cloud_controller.pipeline.federated import train_federated
    from fleet_learning.exceptions import LearningError

    engine = make_engine(fleet.ctl.database_url)
    ctx = StepContext(
        job_id="j-0000fed0",
        kind="federated",
        model_id=MODEL,
        params=JobParams(min_samples=300),
        artifacts={},
        workdir=tmp_path,
        engine=engine,
        settings=None,  # type: ignore[arg-type]  # neither step reads it
        signals=Signals(),
        log=lambda _: None,
    )
    try:
        data = DatasetStep().run(ctx)
        ctx.artifacts["dataset"] = data
        assert data["train"] + data["validation"] + data["heldout"] == data["records"] == 600
        assert data["validation"] > 30 and data["heldout"] > 30, "the held-out records are halved"
        seen: dict[str, Any] = {}

        def simulation(*args: Any, standardisation: Any = None, held_out: Any = None, **_: Any) -> None:
            seen.update(standardisation=standardisation, held_out=held_out)
            raise LearningError("stopped by the test")

        monkeypatch.setattr(fleet_learning.federated, "run_simulation", simulation)
        with pytest.raises(StepFailed, match="stopped by the test"):
            train_federated(ctx)
    finally:
        engine.dispose()
    (tx, _), (vx, vy) = (load(tmp_path / "dataset" / f) for f in (TRAIN, VALIDATION))
    np.testing.assert_array_equal(seen["held_out"][0], vx)
    np.testing.assert_array_equal(seen["held_out"][1], vy)
    assert seen["standardisation"] is not None, "the scaling is not fitted on what the rounds are judged on"
    np.testing.assert_allclose(seen["standardisation"].mean, tx.mean(axis=0), rtol=1e-4, atol=1e-5)


def test_jobs_api_refuses_what_it_cannot_run(fleet: JobFleet) -> None:
    with fleet.client() as client:
        bad = client.post("/api/v1/jobs", json={"model_id": MODEL, "params": {"margin": 2}})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "params", "margin"]
        unknown = client.post("/api/v1/jobs", json={"model_id": MODEL, "params": {"epochz": 3}})
        assert unknown.status_code == 422
        shrinking = client.post(
            "/api/v1/jobs", json={"model_id": MODEL, "params": {"waves": [{"percent": 50}, {"percent": 10}]}}
        )
        assert shrinking.status_code == 422
        assert "waves.1.percent: 10 is below the previous wave's 50" in shrinking.json()["detail"][0]["msg"]
        federated = client.post(
            "/api/v1/jobs",
            json={"kind": "federated", "model_id": MODEL, "params": {"federated": {"strategy": "krum?"}}},
        )
        assert federated.status_code == 422
        assert federated.json()["detail"][0]["loc"] == ["body", "params", "federated", "strategy"]
        norecipe = client.post("/api/v1/jobs", json={"model_id": "other"})
        assert norecipe.status_code == 404
        assert norecipe.json()["detail"] == (
            "Model other has no training recipe: PUT /api/v1/models/other/recipe first"
        )
        assert client.get("/api/v1/jobs/j-00000000").json() == {"detail": "Job j-00000000 not found"}
        assert client.post("/api/v1/jobs/j-00000000/cancel").status_code == 404
        recipe = client.put(f"/api/v1/models/{MODEL}/recipe", json={"entry_point": "nope"})
        assert recipe.status_code == 422 and recipe.json()["detail"].startswith("Not a training recipe:")
        assert client.get("/api/v1/models/other/recipe").json() == {
            "detail": "Model other has no training recipe"
        }
        # Bounded: the worker holds a job's records in memory, and a recipe is a small document.
        many = client.post("/api/v1/jobs", json={"model_id": MODEL, "params": {"max_samples": 500_001}})
        assert many.status_code == 422 and many.json()["detail"][0]["loc"] == [
            "body",
            "params",
            "max_samples",
        ]
        cpus = client.post(
            "/api/v1/jobs",
            json={"kind": "federated", "model_id": MODEL, "params": {"federated": {"num_cpus": 9}}},
        )
        assert cpus.status_code == 422
        assert cpus.json()["detail"][0]["loc"] == ["body", "params", "federated", "num_cpus"]
        huge = b'{"entry_point": "fleet_learning.models:mlp", "pad": "' + b"x" * (64 * 1024) + b'"}'
        too_large = client.put(
            f"/api/v1/models/{MODEL}/recipe", content=huge, headers={"Content-Type": "application/json"}
        )
        assert (too_large.status_code, too_large.json()) == (
            413,
            {"detail": "A recipe is at most 65536 bytes"},
        )
    with fleet.client("viewer") as viewer:
        assert viewer.post("/api/v1/jobs", json={"model_id": MODEL}).status_code == 403
        assert viewer.get(f"/api/v1/models/{MODEL}/recipe").json()["recipe"]["entry_point"] == (
            "fleet_learning.models:mlp"
        )
    with fleet.client(None) as browser:
        browser.cookies.set("edgefleet_token", fleet.ctl.tokens["viewer"])
        refused = browser.post("/jobs/j-00000000/cancel")
        assert (refused.status_code, refused.json()) == (403, {"detail": "Role viewer may not do this"})


def test_a_job_cancelled_by_the_cli_ends_cancelled_and_a_second_cancel_is_refused(fleet: JobFleet) -> None:
    job = fleet.start_job(min_samples=300, epochs=10_000)  # it cannot end before the cancel is seen
    args = ("--url", fleet.ctl.url, "--token", fleet.ctl.tokens["operator"])
    cancelled = fleet.ctl.cli("job", "cancel", job["id"], *args)
    # Cancelled at once while queued; asked to stop if the worker took it already.
    assert cancelled.returncode == 0, cancelled.stderr
    assert re.search(rf"job {job['id']} (cancelled|asked to stop)", cancelled.stdout)
    done = _ended(fleet, job["id"], timeout_s=60)
    assert done["state"] == "cancelled" and done["steps"][-1]["state"] == "cancelled"
    again = fleet.ctl.cli("job", "cancel", job["id"], *args)
    assert again.returncode == 1
    assert f"409: Job {job['id']} is cancelled: only a queued or running job can be cancelled" in again.stderr
    # The dashboard and /metrics show it.
    with fleet.client(None) as browser:
        browser.cookies.set("edgefleet_token", fleet.ctl.tokens["viewer"])
        listing = browser.get("/jobs")
        assert listing.status_code == 200 and f'href="/jobs/{job["id"]}"' in listing.text
        page = browser.get(f"/jobs/{job['id']}")
        assert page.status_code == 200 and f"job {job['id']}".lower() in page.text.lower()
        assert browser.get("/jobs/j-00000000").status_code == 404
        metrics = browser.get("/metrics").text
    cancelled_jobs = re.search(r'^edgefleet_jobs\{kind="retrain",state="cancelled"\} (\S+)$', metrics, re.M)
    assert cancelled_jobs is not None and float(cancelled_jobs.group(1)) >= 1


def test_federated_params_publish_every_setting_of_fleet_learning_federated_config() -> None:
    """The API's FederatedParams mirrors FederatedConfig (the API process does not import
    fleet_learning): same fields, same types, same defaults, and each converts into the other; the
    fields saying where the rounds run (engine, federation) are the worker's alone."""
    from cloud_controller.job_models import ENGINE_FIELDS, FederatedParams
    from cloud_controller.pipeline.federated import federated_config
    from fleet_learning.config import FederatedConfig

    ours, theirs = FederatedParams.model_json_schema(), FederatedConfig.model_json_schema()
    assert set(ENGINE_FIELDS) <= set(ours["properties"])
    ours["properties"] = {k: v for k, v in ours["properties"].items() if k not in ENGINE_FIELDS}

    def shape(schema: dict[str, Any]) -> dict[str, Any]:
        def kind(prop: dict[str, Any]) -> Any:
            return prop.get("type") or sorted(str(p.get("type")) for p in prop.get("anyOf", []))

        return {name: (kind(p), p.get("default"), p.get("enum")) for name, p in schema["properties"].items()}

    assert shape(ours) == shape(theirs)
    params = FederatedParams(strategy="fedprox", mu=0.1, rounds=5)
    FederatedConfig.model_validate(params.model_dump(exclude=set(ENGINE_FIELDS)))
    deployed = FederatedParams(engine="deployment", federation={"superlink": "fl:9093", "ca_file": "/ca.pem"})
    assert federated_config(deployed) == federated_config(FederatedParams())


def test_worker_refuses_a_schedule_it_cannot_read() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cloud_controller.cli", "worker", "--schedule", "sensor-mlp=daily"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--schedule 'sensor-mlp=daily': expected MODEL=SECONDS, e.g. sensor-mlp=86400" in result.stderr
