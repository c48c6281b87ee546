"""An operator's job for an alarm (`ask` alarms): `POST /api/v1/alarms/{id}/job` and the alarms page's
buttons, on a real controller (its evaluator passing every 0.2 s) on both stores.

Alarms fire from drift windows written as ingest scores them (as in test_alarms.py); no worker runs,
so the jobs started stay queued.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from sqlmodel import Session

from cloud_controller.db import make_engine
from cloud_controller.job_models import ModelRecipe
from simulators.controller import ControllerProcess
from tests.controller.alarm_helpers import alarm_controller
from tests.controller.alarm_helpers import alarms as _alarms
from tests.controller.alarm_helpers import until as _until

POLICY = {"psi_threshold": 0.25, "accuracy_floor": None, "window_s": 1800, "action": "ask"}


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def ctl(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, public_key_file: Path
) -> Iterator[ControllerProcess]:
    """One controller per store for the module (each test has models of its own)."""
    yield from alarm_controller(request.param, tmp_path_factory, public_key_file, "alarm-jobs")


def _drift_window(ctl: ControllerProcess, model: str, site: str, start: float, score: float) -> None:
    """A PSI-scored drift window of ``model`` at ``site``, as ingest writes it."""
    row = (site, model, "1.0.0", start, start + 60, 500, "{}", score, "psi")
    sql = (
        "INSERT INTO drift (site_id, model_id, model_version, window_start, window_end, count, summary,"
        " score, score_method) VALUES ({})"
    )
    if ctl.database_url.startswith("sqlite:///"):
        with sqlite3.connect(ctl.database_url.removeprefix("sqlite:///")) as conn:
            conn.execute(sql.format(", ".join("?" * 9)), row)
        return
    with psycopg.connect(ctl.database_url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        conn.execute(sql.format(", ".join(["%s"] * 9)), row)


def _recipe(ctl: ControllerProcess, model: str) -> None:
    """A training recipe row (no worker runs here: what it says does not matter; setting one through
    the API would load torch into the controller)."""
    engine = make_engine(ctl.database_url)
    try:
        with Session(engine) as session:
            session.add(ModelRecipe(model_id=model, recipe={"entry_point": "test"}, updated_by="test"))
            session.commit()
    finally:
        engine.dispose()


def _open_alarm(ctl: ControllerProcess, *, recipe: bool = True, site: str = "site-a") -> dict[str, Any]:
    """An open `ask` data-drift alarm of a new model at ``site``."""
    model = f"ask-{uuid.uuid4().hex[:8]}"
    with ctl.client("operator") as client:
        assert client.put(f"/api/v1/models/{model}/alarm-policy", json=POLICY).status_code == 200
    if recipe:
        _recipe(ctl, model)
    _drift_window(ctl, model, site, 0.0, 0.4)
    (alarm,) = _until("the drift alarm", lambda: _alarms(ctl, model, state="open"))
    assert (alarm["action"], alarm["job_id"]) == ("ask", None)
    return alarm


def _start(
    ctl: ControllerProcess, alarm_id: int, body: dict[str, Any], role: str = "operator"
) -> httpx.Response:
    with ctl.client(role) as client:
        return client.post(f"/api/v1/alarms/{alarm_id}/job", json=body)


def test_an_operator_starts_one_job_for_an_ask_alarm_scoped_to_its_site(ctl: ControllerProcess) -> None:
    alarm = _open_alarm(ctl)
    alarm_id, model = alarm["id"], alarm["model_id"]

    assert _start(ctl, alarm_id, {"kind": "retrain"}, role="viewer").status_code == 403
    unknown = _start(ctl, 999_999_999, {"kind": "retrain"})
    assert (unknown.status_code, unknown.json()["detail"]) == (404, "Alarm 999999999 not found")
    refused = _start(ctl, alarm_id, {"kind": "retrain", "params": {"sites": ["site-b"]}})
    assert refused.status_code == 422 and "alarm's site" in refused.text
    assert _alarms(ctl, model)[0]["job_id"] is None, "nothing refused set a job"

    started = _start(ctl, alarm_id, {"kind": "retrain", "params": {"epochs": 3, "margin": 0.05}})
    assert started.status_code == 201, started.text
    job = started.json()
    assert (job["kind"], job["model_id"], job["state"], job["trigger"], job["created_by"]) == (
        "retrain",
        model,
        "queued",
        "alarm",
        "operator:test-operator",
    )
    assert job["trigger_ref"] == f"alarm {alarm_id}: data_drift at site-a"
    params = job["params"]
    assert (params["sites"], params["epochs"], params["margin"]) == (["site-a"], 3, 0.05)
    # The policy's window (1800 s) before the alarm fired, until now.
    elapsed = time.time() - alarm["fired_at"]
    assert 1800 <= params["window_s"] <= 1800 + elapsed + 1
    assert _alarms(ctl, model)[0]["job_id"] == job["id"]
    with ctl.client("viewer") as client:
        shown = client.get(f"/api/v1/jobs/{job['id']}")
    assert shown.status_code == 200 and shown.json()["params"] == params

    again = _start(ctl, alarm_id, {"kind": "federated"})
    assert again.status_code == 409 and job["id"] in again.json()["detail"]
    with ctl.client("viewer") as client:
        assert client.get("/api/v1/jobs", params={"model_id": model}).json()["count"] == 1
    with ctl.client("operator") as client:
        trail = client.get("/api/v1/audit", params={"resource": f"alarm/{alarm_id}"}).json()
        created = client.get("/api/v1/audit", params={"resource": f"job/{job['id']}"}).json()
    assert [(e["action"], e["actor"], e["after"]) for e in trail] == [
        ("alarm.job", "operator:test-operator", {"job_id": job["id"]})
    ]
    assert [(e["action"], e["actor"]) for e in created] == [("create", "operator:test-operator")]


def test_operators_racing_for_one_alarm_start_one_job(ctl: ControllerProcess) -> None:
    alarm = _open_alarm(ctl)
    with ThreadPoolExecutor(4) as pool:
        answers = list(
            pool.map(lambda kind: _start(ctl, alarm["id"], {"kind": kind}), ["retrain", "federated"] * 2)
        )
    assert sorted(a.status_code for a in answers) == [201, 409, 409, 409], [a.text for a in answers]
    (job,) = [a.json() for a in answers if a.status_code == 201]
    assert all(job["id"] in a.json()["detail"] for a in answers if a.status_code == 409)
    with ctl.client("viewer") as client:
        jobs = client.get("/api/v1/jobs", params={"model_id": alarm["model_id"]}).json()["data"]
    assert [j["id"] for j in jobs] == [job["id"]]
    assert _alarms(ctl, alarm["model_id"])[0]["job_id"] == job["id"]


def test_a_resolved_alarm_gets_no_job(ctl: ControllerProcess) -> None:
    alarm = _open_alarm(ctl)
    _drift_window(ctl, alarm["model_id"], "site-a", 60.0, 0.05)
    _until("the alarm to resolve", lambda: _alarms(ctl, alarm["model_id"], state="resolved"))
    refused = _start(ctl, alarm["id"], {"kind": "retrain"})
    assert refused.status_code == 409 and "is resolved" in refused.json()["detail"], refused.text
    with ctl.client("viewer") as client:
        assert client.get("/api/v1/jobs", params={"model_id": alarm["model_id"]}).json()["count"] == 0


def test_without_a_recipe_no_job_is_made_but_an_unfinished_job_covering_the_site_is_attached(
    ctl: ControllerProcess,
) -> None:
    alarm = _open_alarm(ctl, recipe=False)
    model = alarm["model_id"]
    refused = _start(ctl, alarm["id"], {"kind": "retrain"})
    assert refused.status_code == 404 and "no training recipe" in refused.json()["detail"]
    assert _alarms(ctl, model)[0]["job_id"] is None
    # An operator's job on every site's data covers site-a: the alarm joins it, whatever its kind.
    _recipe(ctl, model)
    with ctl.client("operator") as client:
        running = client.post("/api/v1/jobs", json={"kind": "federated", "model_id": model}).json()
    attached = _start(ctl, alarm["id"], {"kind": "retrain"})
    assert attached.status_code == 201, attached.text
    assert (attached.json()["id"], attached.json()["kind"]) == (running["id"], "federated")
    assert _alarms(ctl, model)[0]["job_id"] == running["id"]
    with ctl.client("viewer") as client:
        assert client.get("/api/v1/jobs", params={"model_id": model}).json()["count"] == 1


def _browser(ctl: ControllerProcess, role: str) -> httpx.Client:
    client = httpx.Client(base_url=ctl.url, timeout=30)
    client.cookies.set("edgefleet_token", ctl.tokens[role])
    return client


def test_alarms_page_buttons_start_a_job_for_an_operator_only(ctl: ControllerProcess) -> None:
    alarm = _open_alarm(ctl)
    alarm_id, model = alarm["id"], alarm["model_id"]
    action = f'action="/alarms/{alarm_id}/job"'
    with _browser(ctl, "viewer") as viewer:
        page = viewer.get("/alarms")
        assert page.status_code == 200 and f"<td>{model}</td>" in page.text
        assert action not in page.text and "start retraining job" not in page.text
        assert viewer.post(f"/alarms/{alarm_id}/job", data={"kind": "retrain"}).status_code == 403
    assert _alarms(ctl, model)[0]["job_id"] is None
    with _browser(ctl, "operator") as operator:
        page = operator.get("/alarms").text
        assert page.count(action) == 2
        assert "start retraining job" in page and "start federated job" in page
        started = operator.post(f"/alarms/{alarm_id}/job", data={"kind": "federated"})
        assert started.status_code == 303, started.text
        job_id = _alarms(ctl, model)[0]["job_id"]
        assert job_id is not None and started.headers["location"] == f"/jobs/{job_id}"
        assert operator.get(started.headers["location"]).status_code == 200
        with ctl.client("viewer") as client:
            job = client.get(f"/api/v1/jobs/{job_id}").json()
        assert (job["kind"], job["params"]["sites"], job["created_by"]) == (
            "federated",
            ["site-a"],
            "operator:test-operator",
        )
        # The alarm has its job: no buttons any more, and a second post is refused on the page.
        page = operator.get("/alarms").text
        assert action not in page and f'<a href="/jobs/{job_id}">' in page
        again = operator.post(f"/alarms/{alarm_id}/job", data={"kind": "retrain"})
        assert again.status_code == 303 and again.headers["location"].startswith("/alarms?error=")
        shown = operator.get(again.headers["location"]).text
        assert f'<p class="fail" id="alarm-error">Alarm {alarm_id} has job {job_id} already</p>' in shown
