"""Alarm policies and the evaluator of a real controller (evaluating every 0.2 s), on both stores."""

from __future__ import annotations

import re
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from fleet_protocol import TelemetryRecord
from fleet_protocol.ingest import IngestBatch
from fleet_protocol.labels import DeviceLabels, Label, LabelUpload
from simulators.controller import ControllerProcess
from tests.controller.alarm_helpers import alarm_controller
from tests.controller.alarm_helpers import alarms as _alarms
from tests.controller.alarm_helpers import until as _until
from tests.controller.factories import state

MODEL = "alarm-mlp"
DRIFT_MODEL = "drift-mlp"


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def ctl(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, public_key_file: Path
) -> Iterator[ControllerProcess]:
    """One controller per store for the module (each test has its own model): starts take seconds."""
    yield from alarm_controller(request.param, tmp_path_factory, public_key_file, "alarms")


def _evaluated_since(ctl: ControllerProcess, alarm: dict[str, Any], since: float) -> bool:
    """Whether the evaluator judged this open alarm again after ``since`` (it stamps every pass)."""
    found = [a for a in _alarms(ctl, alarm["model_id"]) if a["id"] == alarm["id"]]
    return bool(found) and found[0]["evaluated_at"] > since


def _metric(ctl: ControllerProcess, name: str, **labels: str) -> float | None:
    with ctl.client("viewer") as client:
        text = client.get("/metrics").text
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    match = re.search(rf"^{name}{{{re.escape(wanted)}}} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else None


def _labelled_records(ctl: ControllerProcess, seqs: range, label: int) -> None:
    """Records of dev-a1 read just now, predicting 0, with their labels sent late by the site."""
    now = time.time()
    records = [
        TelemetryRecord(
            device_id="dev-a1",
            seq=s,
            ts=now - 60 + s / 1000,
            model_id=MODEL,
            model_version="1.0.0",
            outputs=[0.9, 0.1],
            predicted=0,
        )
        for s in seqs
    ]
    labels = [DeviceLabels(device_id="dev-a1", labels=[Label(seq=s, label=label) for s in seqs])]
    body = IngestBatch(
        site="site-a", gateway_id="gw-a", batch_id=uuid.uuid4().hex, records=records, labels=labels
    )
    with ctl.client("gateway") as client:
        assert client.post("/api/v1/ingest", content=body.model_dump_json()).status_code == 200


def _drift_window(ctl: ControllerProcess, start: float, score: float, method: str = "psi") -> None:
    """A drift window of DRIFT_MODEL as ingest scores it (the PSI computation has tests of its own)."""
    row = ("site-a", DRIFT_MODEL, "1.0.0", start, start + 60, 500, "{}", score, method)
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


def test_accuracy_alarm_fires_below_the_floor_and_resolves_when_labels_correct_it(
    ctl: ControllerProcess,
) -> None:
    with ctl.client("gateway") as client:
        body = IngestBatch(site="site-a", gateway_id="gw-a", batch_id="states", devices=[state("dev-a1")])
        client.post("/api/v1/ingest", content=body.model_dump_json())
    with ctl.client("operator") as client:
        assert client.get(f"/api/v1/models/{MODEL}/alarm-policy").json()["updated_by"] is None
        policy = {
            "psi_threshold": None,
            "accuracy_floor": 0.8,
            "min_samples": 40,
            "window_s": 1800,
            "action": "auto",
        }
        response = client.put(f"/api/v1/models/{MODEL}/alarm-policy", json=policy)
        assert response.status_code == 200, response.text
        assert response.json()["updated_by"] == "operator:test-operator"
        refused = client.put(f"/api/v1/models/{MODEL}/alarm-policy", json={**policy, "accuracy_floor": 1.5})
        assert refused.status_code == 422
    with ctl.client("viewer") as client:
        assert client.put(f"/api/v1/models/{MODEL}/alarm-policy", json=policy).status_code == 403

    # 30 right: too few labelled records to judge (min_samples 40), whatever the accuracy.
    _labelled_records(ctl, range(1, 31), label=0)
    _until(
        "the accuracy metric",
        lambda: _metric(ctl, "edgefleet_model_accuracy", model=MODEL, version="1.0.0", site="site-a") == 1.0,
    )
    # 30 wrong: 30 / 60 = 0.5, below the floor of 0.8.
    _labelled_records(ctl, range(31, 61), label=1)
    (alarm,) = _until("the accuracy alarm", lambda: _alarms(ctl, MODEL, state="open"))
    assert {
        k: alarm[k]
        for k in ("model_id", "version", "site_id", "kind", "value", "threshold", "samples", "action")
    } == {
        "model_id": MODEL,
        "version": "1.0.0",
        "site_id": "site-a",
        "kind": "accuracy",
        "value": 0.5,
        "threshold": 0.8,
        "samples": 60,
        "action": "auto",
    }
    assert alarm["resolved_at"] is None and alarm["job_id"] is None
    assert _metric(ctl, "edgefleet_alarms_open", model=MODEL, kind="accuracy") == 1.0
    since = time.time()
    _until("another pass", lambda: _evaluated_since(ctl, alarm, since))
    assert [a["id"] for a in _alarms(ctl, MODEL)] == [alarm["id"]]

    # The station corrects its labels of 31..60: every record was right after all.
    correction = LabelUpload(
        site="site-a",
        devices=[DeviceLabels(device_id="dev-a1", labels=[Label(seq=s, label=0) for s in range(31, 61)])],
    )
    with ctl.client("operator") as client:
        assert client.post("/api/v1/labels", content=correction.model_dump_json()).json()["stored"] == 30
    (resolved,) = _until("the alarm to resolve", lambda: _alarms(ctl, MODEL, state="resolved"))
    assert (
        resolved["id"] == alarm["id"]
        and resolved["last_value"] == 1.0
        and resolved["resolved_at"] >= alarm["fired_at"]
    )
    assert _alarms(ctl, MODEL, state="open") == []
    assert _metric(ctl, "edgefleet_alarms_open", model=MODEL, kind="accuracy") == 0.0
    with ctl.client("operator") as client:
        trail = client.get("/api/v1/audit", params={"resource": f"alarms/{alarm['id']}"}).json()
    assert [entry["action"] for entry in trail] == ["alarm.resolve", "alarm.fire"]


def test_data_drift_alarm_follows_the_latest_psi_window_and_survives_a_restart(
    ctl: ControllerProcess,
) -> None:
    with ctl.client("operator") as client:
        policy = {"psi_threshold": 0.25, "accuracy_floor": None, "action": "ask"}
        assert client.put(f"/api/v1/models/{DRIFT_MODEL}/alarm-policy", json=policy).status_code == 200
    _drift_window(ctl, 0.0, 0.1)
    _drift_window(ctl, 60.0, 0.4)
    (alarm,) = _until("the drift alarm", lambda: _alarms(ctl, DRIFT_MODEL, state="open"))
    assert (alarm["kind"], alarm["value"], alarm["threshold"], alarm["samples"], alarm["action"]) == (
        "data_drift",
        0.4,
        0.25,
        500,
        "ask",
    )
    if ctl.database_url.startswith("sqlite"):  # a start costs seconds: the store changes nothing here
        # A restart: the open alarm stays the one open alarm, evaluated by the new process.
        ctl.stop()
        since = time.time()
        ctl.start()
        _until("a pass after the restart", lambda: _evaluated_since(ctl, alarm, since))
        assert [a["id"] for a in _alarms(ctl, DRIFT_MODEL, state="open")] == [alarm["id"]]
    # A mean-shift score is in standard deviations, not PSI: it neither fires nor resolves.
    _drift_window(ctl, 120.0, 9.0, method="mean_shift")
    since = time.time()
    _until("a pass after the mean-shift window", lambda: _evaluated_since(ctl, alarm, since))
    assert [a["id"] for a in _alarms(ctl, DRIFT_MODEL, state="open")] == [alarm["id"]]
    _drift_window(ctl, 180.0, 0.05)
    (resolved,) = _until("the drift alarm to resolve", lambda: _alarms(ctl, DRIFT_MODEL, state="resolved"))
    assert resolved["last_value"] == 0.05
    # Drift again, then the policy switched off: the alarm resolves and no other fires.
    _drift_window(ctl, 240.0, 0.5)
    _until("a second drift alarm", lambda: _alarms(ctl, DRIFT_MODEL, state="open"))
    with ctl.client("operator") as client:
        assert (
            client.put(
                f"/api/v1/models/{DRIFT_MODEL}/alarm-policy", json={**policy, "action": "off"}
            ).status_code
            == 200
        )
    _until("the alarms to resolve", lambda: not _alarms(ctl, DRIFT_MODEL, state="open"))
    assert len(_alarms(ctl, DRIFT_MODEL, state="resolved", kind="data_drift")) == 2


def test_an_alarm_another_evaluator_fired_first_is_updated_and_the_rest_of_the_pass_goes_on(
    ctl: ControllerProcess,
) -> None:
    """Every replica runs an evaluator: the one-open-alarm index refuses the second insert (at the
    flush on PostgreSQL), and the loser takes the winner's alarm as open instead of losing its pass."""
    from sqlalchemy import event
    from sqlmodel import Session, col, select

    from cloud_controller.alarms import Reading, apply
    from cloud_controller.db import make_engine
    from cloud_controller.label_models import Alarm, AlarmKind, AlarmPolicyBody, AlarmPolicyPublic

    model = f"race-{uuid.uuid4().hex[:8]}"
    now = time.time()
    rules = {
        model: AlarmPolicyPublic(
            model_id=model, updated_by=None, updated_at=None, **AlarmPolicyBody(action="ask").model_dump()
        )
    }
    found = [
        Reading(model, site, AlarmKind.ACCURACY, "1.0.0", 0.5, 100, 0.8, True)
        for site in ("site-a", "site-b")
    ]
    engine = make_engine(ctl.database_url)

    def other_evaluator_first(*_: object) -> None:
        with Session(engine) as other:
            other.add(
                Alarm(
                    model_id=model,
                    version="1.0.0",
                    site_id="site-a",
                    kind="accuracy",
                    value=0.6,
                    threshold=0.8,
                    samples=90,
                    action="ask",
                    fired_at=now - 1,
                    last_value=0.6,
                    evaluated_at=now - 1,
                )
            )
            other.commit()

    try:
        with Session(engine) as session:
            event.listen(session, "before_flush", other_evaluator_first, once=True)
            outcome = apply(session=session, found=found, rules=rules, now=now)
            assert [(a.site_id, a.value) for a in outcome.fired] == [("site-b", 0.5)], "the pass went on"
        with Session(engine) as session:
            rows = session.exec(
                select(Alarm).where(Alarm.model_id == model).order_by(col(Alarm.site_id))
            ).all()
            got = [(a.site_id, a.value, a.last_value, a.evaluated_at, a.resolved_at) for a in rows]
        assert got == [("site-a", 0.6, 0.5, now, None), ("site-b", 0.5, 0.5, now, None)]
    finally:
        engine.dispose()
