"""The jobs worker on PostgreSQL: killed mid-job (kill -9), several at once, started by an alarm;
and scheduled jobs made once per period, whichever workers race to make them (both stores)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.engine import Engine
from sqlmodel import Session

from cloud_controller import jobs
from cloud_controller.db import make_engine
from cloud_controller.migrate import upgrade
from tests.controller.conftest import database_url, start_controller
from tests.controller.test_jobs_fleet import MODEL, JobFleet, kill, make_job_fleet, stop


@pytest.fixture
def pg_fleet(
    tmp_path: Path, public_key_file: Path, signing_key: Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> Iterator[JobFleet]:
    # The alarm evaluator passes often enough for an alarm to fire within a test.
    monkeypatch.setenv("EDGEFLEET_CONTROLLER__ALARM_TICK_S", "0.2")
    for url in database_url("postgres", tmp_path):
        process, ctl = start_controller(tmp_path, url, public_key_file)
        try:
            yield make_job_fleet(ctl, signing_key, tmp_path)
        finally:
            process.terminate()
            process.wait(10)


def _claims(log: str) -> list[str]:
    """The job ids a worker's log says it took, one per claim."""
    return re.findall(r"job (j-[0-9a-f]{8}): \w+ of \S+, attempt \d+", log)


@pytest.mark.slow
def test_job_of_a_killed_worker_is_finished_by_another_and_two_workers_never_run_one_job_twice(
    pg_fleet: JobFleet,
) -> None:
    fleet = pg_fleet
    fleet.ingest(600)
    # Long enough a training (seconds) to be killed in the middle of it, or of the build after it.
    job = fleet.start_job(min_samples=300, rollout=False, epochs=600)
    first = fleet.worker("w1", "--lease", "2", "--no-alarms")
    try:
        running = fleet.wait(
            job["id"], lambda j: j["step"] in ("train", "build") and len(j["steps"][1]["log"]) >= 1
        )
    finally:
        kill(first)
    assert (running["state"], running["worker_id"], running["attempts"]) == ("running", "w1", 1)
    killed_at = [s["name"] for s in running["steps"]].index(running["step"])
    # Jobs that fail at once (more samples asked than there are): many claims in a short time.
    quick = [fleet.start_job(min_samples=100_000)["id"] for _ in range(6)]
    workers = [fleet.worker(name, "--lease", "2", "--no-alarms") for name in ("w2", "w3")]
    try:
        done = fleet.wait(job["id"], lambda j: j["state"] not in ("queued", "running"))
        for job_id in quick:
            fleet.wait(job_id, lambda j: j["state"] == "failed")
    finally:
        for worker in workers:
            stop(worker)

    assert done["state"] == "succeeded", (done["error"], [s["log"] for s in done["steps"]])
    assert done["attempts"] == 2 and done["worker_id"] in ("w2", "w3")
    # Resumed at its first unfinished step: the steps before it were not run again.
    for before, after in zip(running["steps"][:killed_at], done["steps"][:killed_at], strict=True):
        assert after["started_at"] == before["started_at"] and after["state"] == "succeeded"
    assert done["steps"][killed_at]["started_at"] > running["steps"][killed_at]["started_at"]
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
def test_alarm_job_with_too_little_labelled_data_fails_at_dataset(pg_fleet: JobFleet) -> None:
    fleet = pg_fleet
    with fleet.client() as client:
        policy = {"accuracy_floor": 0.8, "psi_threshold": None, "min_samples": 30, "action": "auto"}
        response = client.put(f"/api/v1/models/{MODEL}/alarm-policy", json=policy)
        assert response.status_code == 200, response.text
    # The devices predicted class 0 for every record: labels make their accuracy low; the alarm fires.
    fleet.ingest(120)
    alarm = _wait_for_alarm(fleet, lambda a: True)
    assert alarm["job_id"] is None
    worker = fleet.worker("w1")
    try:
        alarm = _wait_for_alarm(fleet, lambda a: a["job_id"] is not None)
        done = fleet.wait(alarm["job_id"], lambda j: j["state"] not in ("queued", "running"))
    finally:
        stop(worker)

    assert (done["trigger"], done["state"], done["step"]) == ("alarm", "failed", "dataset")
    assert done["trigger_ref"].startswith(f"alarm {alarm['id']}: accuracy at site-a")
    assert done["error"].startswith(
        "dataset: not enough labelled data (120 < 200): labelled records of sensor-mlp of site(s) site-a"
        " with features from "
    )
    assert [s["state"] for s in done["steps"]] == ["failed"] + ["pending"] * 5
    assert "not enough labelled data (120 < 200)" in done["steps"][0]["log"][-1]
    assert set(fleet.versions()) == {"1.0.0"} and fleet.production() == ["1.0.0"]
    with fleet.client("viewer") as client:
        assert client.get("/api/v1/rollouts").json()["count"] == 0


def _wait_for_alarm(fleet: JobFleet, ok: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        with fleet.client("viewer") as client:
            alarms = client.get("/api/v1/alarms", params={"model_id": MODEL, "state": "open"}).json()["data"]
        found = [a for a in alarms if a["kind"] == "accuracy" and ok(a)]
        if found:
            return found[0]
        assert time.monotonic() < deadline, f"no such alarm: {alarms}"
        time.sleep(0.2)


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_schedule_makes_one_job_per_period_however_many_workers_ask(tmp_path: Path, kind: str) -> None:
    for url in database_url(kind, tmp_path):
        upgrade(url)
        engines = [make_engine(url) for _ in range(4)]  # four workers' connections
        try:

            def ask(engine_and_now: tuple[Engine, float]) -> str | None:
                engine, now = engine_and_now
                return jobs.start_scheduled(engine, MODEL, 3600, actor="worker:w", now=now)

            with ThreadPoolExecutor(4) as pool:
                first = list(pool.map(ask, [(e, 7300.0) for e in engines]))
                later = list(pool.map(ask, [(e, 7300.0 + 3600) for e in engines]))
            made = [j for j in first + later if j is not None]
            assert len(made) == 2 and made[0] != made[1]
            with Session(engines[0]) as session:
                job = jobs.get(session, made[0])
                assert (job.trigger, job.trigger_ref) == ("schedule", "every 3600 s, period 2")
                assert job.state == "queued"
        finally:
            for engine in engines:
                engine.dispose()


def test_an_auto_alarm_joins_only_a_job_that_covers_its_site_else_starts_one_scoped_to_it(
    tmp_path: Path,
) -> None:
    from cloud_controller.job_models import JobCreate, JobParams, JobTrigger
    from cloud_controller.label_models import Alarm

    for url in database_url("sqlite", tmp_path):
        upgrade(url)
        engine = make_engine(url)
        try:
            now = time.time()
            with Session(engine) as session:
                other_site = jobs.new_job(
                    session,
                    JobCreate(model_id=MODEL, params=JobParams(sites=["site-b"])),
                    actor="operator:x",
                    trigger=JobTrigger.OPERATOR,
                    trigger_ref=None,
                )
                alarms = [
                    Alarm(
                        model_id=MODEL,
                        site_id=site,
                        kind="accuracy",
                        value=0.4,
                        threshold=0.8,
                        samples=50,
                        action="auto",
                        fired_at=now - 600,
                        last_value=0.4,
                        evaluated_at=now,
                    )
                    for site in ("site-a", "site-b")
                ]
                session.add_all(alarms)
                session.commit()
                other_id, (a_id, b_id) = other_site.id, [a.id for a in alarms]
            taken = dict(jobs.start_for_alarms(engine, actor="worker:w"))
            assert taken[b_id] == other_id, "site-b's alarm joins the job that trains on site-b"
            assert taken[a_id] != other_id, "site-a's alarm does not join a job of site-b's data"
            with Session(engine) as session:
                job = jobs.get(session, taken[a_id])
            assert (job.trigger, job.params["sites"]) == ("alarm", ["site-a"])
            # The policy's accuracy window (3600 s by default) before the alarm fired, until now.
            assert 3600 + 600 <= job.params["window_s"] <= 3600 + 600 + 60
            # A later alarm of site-a joins that job; one of a site no job covers gets its own.
            with Session(engine) as session:
                later = [
                    Alarm(
                        model_id=MODEL,
                        site_id=site,
                        kind="data_drift",
                        value=0.5,
                        threshold=0.2,
                        samples=100,
                        action="auto",
                        fired_at=now,
                        last_value=0.5,
                        evaluated_at=now,
                    )
                    for site in ("site-a", "site-c")
                ]
                session.add_all(later)
                session.commit()
                a2, c2 = [a.id for a in later]
            again = dict(jobs.start_for_alarms(engine, actor="worker:w"))
            assert again[a2] == taken[a_id] and again[c2] not in (taken[a_id], other_id)
        finally:
            engine.dispose()
