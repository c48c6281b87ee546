"""The jobs worker as processes: killed mid-job (kill -9), several on PostgreSQL, a cancel mid-training."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.controller.conftest import database_url, start_controller
from tests.controller.test_jobs_fleet import JobFleet, kill, make_job_fleet, stop


def _fleet(kind: str, tmp_path: Path, public_key_file: Path, key: Ed25519PrivateKey) -> Iterator[JobFleet]:
    for url in database_url(kind, tmp_path):
        process, ctl = start_controller(tmp_path, url, public_key_file)
        try:
            yield make_job_fleet(ctl, key, tmp_path, epochs=40)
        finally:
            process.terminate()
            process.wait(10)


@pytest.fixture
def pg_fleet(tmp_path: Path, public_key_file: Path, signing_key: Ed25519PrivateKey) -> Iterator[JobFleet]:
    yield from _fleet("postgres", tmp_path, public_key_file, signing_key)


@pytest.fixture
def sqlite_fleet(tmp_path: Path, public_key_file: Path, signing_key: Ed25519PrivateKey) -> Iterator[JobFleet]:
    yield from _fleet("sqlite", tmp_path, public_key_file, signing_key)


def _claims(log: str) -> list[str]:
    """The job ids a worker's log says it took, one per claim."""
    return re.findall(r"job (j-[0-9a-f]{8}): \w+ of \S+, attempt \d+", log)


@pytest.mark.slow
def test_job_of_a_killed_worker_is_finished_by_another_and_two_workers_never_run_one_job_twice(
    pg_fleet: JobFleet,
) -> None:
    fleet = pg_fleet
    fleet.ingest(600)
    job = fleet.start_job(min_samples=300, rollout=False)
    first = fleet.worker("w1", "--lease", "2")
    try:
        running = fleet.wait(
            job["id"],
            lambda j: j["step"] == "train" and any("epoch 5/" in line for line in j["steps"][1]["log"]),
        )
    finally:
        kill(first)
    assert (running["state"], running["worker_id"], running["attempts"]) == ("running", "w1", 1)
    # Jobs that fail at once (more samples asked than there are): many claims in a short time.
    quick = [fleet.start_job(min_samples=100_000)["id"] for _ in range(6)]
    workers = [fleet.worker(name, "--lease", "2") for name in ("w2", "w3")]
    try:
        done = fleet.wait(job["id"], lambda j: j["state"] not in ("queued", "running"))
        for job_id in quick:
            fleet.wait(job_id, lambda j: j["state"] == "failed")
    finally:
        for worker in workers:
            stop(worker)

    assert done["state"] == "succeeded", (done["error"], [s["log"] for s in done["steps"]])
    assert done["attempts"] == 2 and done["worker_id"] in ("w2", "w3")
    # Resumed at train, its first unfinished step: the dataset was not made again.
    assert done["steps"][0]["started_at"] == running["steps"][0]["started_at"]
    assert done["artifacts"]["dataset"] == running["artifacts"]["dataset"]
    assert "1.0.1" in fleet.versions() and fleet.production() == ["1.0.0"]
    claims = [_claims(fleet.worker_log(name)) for name in ("w1", "w2", "w3")]
    assert claims[0] == [job["id"]]
    taken = claims[1] + claims[2]
    assert sorted(taken) == sorted([job["id"], *quick]), "each job claimed exactly once after the kill"
    for job_id in quick:
        failed = fleet.job(job_id)
        assert failed["attempts"] == 1 and failed["error"].startswith(
            "dataset: not enough labelled data (600 < "
        )


@pytest.mark.slow
def test_a_job_cancelled_while_it_trains_stops_and_production_stays(sqlite_fleet: JobFleet) -> None:
    fleet = sqlite_fleet
    fleet.ingest(300)
    job = fleet.start_job(min_samples=200, epochs=10_000)
    worker = fleet.worker("w1")
    try:
        fleet.wait(job["id"], lambda j: j["step"] == "train" and len(j["steps"][1]["log"]) >= 1)
        with fleet.client() as client:
            asked = client.post(f"/api/v1/jobs/{job['id']}/cancel")
        assert asked.status_code == 200, asked.text
        assert asked.json()["state"] == "running" and asked.json()["cancel_requested"] is True
        done = fleet.wait(job["id"], lambda j: j["state"] not in ("queued", "running"), timeout_s=30)
    finally:
        stop(worker)

    assert (done["state"], done["step"], done["error"]) == ("cancelled", "train", "cancelled while running")
    assert [s["state"] for s in done["steps"]] == ["succeeded"] + ["cancelled"] * 5
    epochs = [line for line in done["steps"][1]["log"] if "epoch " in line]
    assert len(epochs) < 10_000 // 5, "training stopped long before its end"
    assert set(fleet.versions()) == {"1.0.0"} and fleet.production() == ["1.0.0"]


@pytest.mark.slow
def test_federated_job_records_its_rounds_and_rolls_out_the_candidate_to_the_group_on_production(
    sqlite_fleet: JobFleet,
) -> None:
    fleet = sqlite_fleet
    fleet.ingest(600)
    federated = {"strategy": "fedavg", "rounds": 2, "min_clients": 2, "local_epochs": 2}
    job = fleet.start_job("federated", min_samples=300, federated=federated)
    worker = fleet.worker("w1")
    try:
        done = fleet.wait(job["id"], lambda j: j["state"] not in ("queued", "running"), timeout_s=240)
    finally:
        stop(worker)

    assert done["state"] == "succeeded", (done["error"], [s["log"] for s in done["steps"]])
    train = done["artifacts"]["train"]
    assert (train["mode"], train["clients"], train["rounds"]) == ("federated", 6, 2)
    rounds = done["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert all((r["sampled"], r["responded"], r["failed"]) == (6, 6, 0) for r in rounds)
    assert rounds[-1]["accuracy"] > 0.8 and rounds[-1]["loss"] is not None
    lineage = fleet.versions()["1.0.1"]["metrics"]["lineage"]
    assert (lineage["kind"], lineage["fl_rounds"], lineage["job_id"]) == ("federated", 2, job["id"])
    # No group named: the rollout goes to the group whose deployment is production.
    assert done["artifacts"]["rollout"]["group"] == "presses"
    with fleet.client(None) as browser:
        browser.cookies.set("edgefleet_token", fleet.ctl.tokens["viewer"])
        page = browser.get(f"/jobs/{job['id']}").text
    assert "Accuracy per round" in page and "Clients per round" in page and ">round</text>" in page
