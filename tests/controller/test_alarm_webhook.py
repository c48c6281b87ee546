"""The alarm webhook of a real controller (evaluating every 0.2 s) against a real HTTP receiver.

Firing and resolution arrive once each with the token; a receiver answering 500, then away, then
a controller restart lose nothing; alarms older than the webhook's max age are skipped, not sent;
the token is never in the controller's log.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlmodel import Session, col, select

from cloud_controller.db import make_engine
from cloud_controller.label_models import Alarm
from cloud_controller.models import Role
from simulators.brokers import free_port
from simulators.controller import ControllerProcess
from tests.controller.alarm_helpers import alarms as _alarms
from tests.controller.alarm_helpers import until as _until
from tests.controller.conftest import database_url

TOKEN = f"whk_{secrets.token_hex(16)}"
REFUSAL = "receiver says no: " + "x" * 1000


class Receiver:
    """An HTTP server on a port of its own that records every POST and answers ``status``."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hooks/edgefleet"
        self.status = 200
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None

    def up(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status = receiver.status
                with receiver.lock:
                    receiver.requests.append(
                        {
                            "path": self.path,
                            "authorization": self.headers.get("Authorization"),
                            "content_type": self.headers.get("Content-Type"),
                            "body": body,
                            "status": status,
                        }
                    )
                answer = b"{}" if status < 300 else REFUSAL.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def down(self) -> None:
        """Nothing listens on the port any more: connections are refused."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def of(self, model: str, *, delivered: bool = True) -> list[dict[str, Any]]:
        """Requests about ``model``'s alarms (answered 2xx, unless ``delivered`` is False)."""
        with self.lock:
            return [
                r
                for r in self.requests
                if r["body"]["alarm"]["model_id"] == model and (not delivered or r["status"] < 300)
            ]


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    found.up()
    try:
        yield found
    finally:
        found.down()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def ctl(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    public_key_file: Path,
    receiver: Receiver,
) -> Iterator[ControllerProcess]:
    tmp = tmp_path_factory.mktemp(f"webhook-{request.param}")
    for url in database_url(request.param, tmp):
        process = ControllerProcess(tmp, public_key_file, database_url=url, token_prefix="test")
        process.env |= {
            "EDGEFLEET_CONTROLLER__ALARM_TICK_S": "0.2",
            "EDGEFLEET_CONTROLLER__ALARM_WEBHOOK_URL": receiver.url,
            "EDGEFLEET_CONTROLLER__ALARM_WEBHOOK_TOKEN": TOKEN,
            "EDGEFLEET_CONTROLLER__ALARM_WEBHOOK_TIMEOUT_S": "2",
        }
        process.start((("gateway", Role.GATEWAY, "site-a"),))
        try:
            yield process
        finally:
            process.stop()
            # Whatever the tests did, the token was sent to the receiver only: never logged.
            assert TOKEN not in process.log.read_text()


def _sent(ctl: ControllerProcess, event: str, result: str) -> float:
    with ctl.client("viewer") as client:
        metrics = client.get("/metrics").text
    wanted = f'edgefleet_alarm_notifications_total{{event="{event}",result="{result}"}}'
    match = re.search(rf"^{re.escape(wanted)} (\S+)$", metrics, re.MULTILINE)
    assert match, f"{wanted} is not exported"
    return float(match.group(1))


def _drift_policy(ctl: ControllerProcess, model: str) -> None:
    with ctl.client("operator") as client:
        policy = {"psi_threshold": 0.25, "accuracy_floor": None, "action": "ask"}
        assert client.put(f"/api/v1/models/{model}/alarm-policy", json=policy).status_code == 200


def _drift_window(ctl: ControllerProcess, model: str, start: float, score: float) -> None:
    """A PSI-scored drift window as ingest stores it: above 0.25 fires, below resolves."""
    engine = make_engine(ctl.database_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO drift (site_id, model_id, model_version, window_start, window_end, count,"
                    " summary, score, score_method) VALUES ('site-a', :model, '1.0.0', :start, :end, 500,"
                    " '{}', :score, 'psi')"
                ),
                {"model": model, "start": start, "end": start + 60, "score": score},
            )
    finally:
        engine.dispose()


def _log_lines(ctl: ControllerProcess, needle: str) -> list[str]:
    return [line for line in ctl.log.read_text().splitlines() if needle in line]


def test_an_alarm_firing_and_resolution_arrive_once_each_with_the_token(
    ctl: ControllerProcess, receiver: Receiver
) -> None:
    model = f"hook-{uuid.uuid4().hex[:8]}"
    ok_before = _sent(ctl, "fired", "ok"), _sent(ctl, "resolved", "ok")
    _drift_policy(ctl, model)
    _drift_window(ctl, model, 0.0, 0.4)
    (alarm,) = _until("the alarm", lambda: _alarms(ctl, model, state="open"))
    _until("alarm.fired at the receiver", lambda: receiver.of(model))
    _drift_window(ctl, model, 60.0, 0.05)
    (resolved,) = _until("the alarm to resolve", lambda: _alarms(ctl, model, state="resolved"))
    _until("alarm.resolved at the receiver", lambda: len(receiver.of(model)) == 2)
    time.sleep(1.5)  # several more passes: nothing is sent again

    got = receiver.of(model, delivered=False)
    assert [(r["body"]["event"], r["body"]["id"]) for r in got] == [
        ("alarm.fired", f"{alarm['id']}:alarm.fired"),
        ("alarm.resolved", f"{alarm['id']}:alarm.resolved"),
    ]
    assert {(r["authorization"], r["content_type"], r["path"]) for r in got} == {
        (f"Bearer {TOKEN}", "application/json", "/hooks/edgefleet")
    }
    # The alarm as GET /api/v1/alarms shows it, when each event was sent.
    assert got[0]["body"]["alarm"] == alarm | {
        "last_value": got[0]["body"]["alarm"]["last_value"],
        "evaluated_at": got[0]["body"]["alarm"]["evaluated_at"],
    }
    assert got[1]["body"]["alarm"] == resolved
    assert resolved["state"] == "resolved" and resolved["last_value"] == 0.05
    assert (_sent(ctl, "fired", "ok"), _sent(ctl, "resolved", "ok")) == (ok_before[0] + 1, ok_before[1] + 1)
    assert TOKEN not in ctl.log.read_text()


def test_events_wait_for_a_refusing_then_absent_receiver_and_a_restart_then_arrive_once(
    ctl: ControllerProcess, receiver: Receiver
) -> None:
    model = f"hook-{uuid.uuid4().hex[:8]}"
    _drift_policy(ctl, model)
    failed_before = _sent(ctl, "fired", "failed"), _sent(ctl, "resolved", "failed")
    receiver.status = 500
    try:
        _drift_window(ctl, model, 0.0, 0.4)
        (alarm,) = _until("the alarm", lambda: _alarms(ctl, model, state="open"))
        fired_key, resolved_key = f"{alarm['id']}:alarm.fired", f"{alarm['id']}:alarm.resolved"
        _until("3 refused attempts", lambda: _sent(ctl, "fired", "failed") >= failed_before[0] + 3)
        assert len(receiver.of(model, delivered=False)) >= 3 and receiver.of(model) == []
        # Logged once, not every pass, with what the receiver answered (cut short).
        (logged,) = _log_lines(ctl, f"{fired_key} not delivered")
        assert "answered 500" in logged and "receiver says no: xxx" in logged
        assert "x" * 300 not in logged
    finally:
        receiver.status = 200
    _until("alarm.fired once the receiver takes it", lambda: receiver.of(model))
    _until("the recovery logged", lambda: _log_lines(ctl, f"{fired_key} delivered to"))

    receiver.down()
    try:
        _drift_window(ctl, model, 60.0, 0.05)
        _until("the alarm to resolve", lambda: _alarms(ctl, model, state="resolved"))
        _until("2 attempts on nothing", lambda: _sent(ctl, "resolved", "failed") >= failed_before[1] + 2)
        (logged,) = _log_lines(ctl, f"{resolved_key} not delivered")
        assert "unreachable" in logged and "hooks/edgefleet" not in logged
        if ctl.database_url.startswith("sqlite"):  # a start costs seconds: the store changes nothing
            # What is undelivered is in the database: a restarted controller sends it.
            ctl.stop()
            ctl.start()
            time.sleep(1.0)  # passes of the new process with the receiver still away
        assert [r["body"]["event"] for r in receiver.of(model)] == ["alarm.fired"]
    finally:
        receiver.up()
    _until("alarm.resolved once the receiver is back", lambda: len(receiver.of(model)) == 2)
    time.sleep(1.5)
    assert [r["body"]["id"] for r in receiver.of(model)] == [fired_key, resolved_key]
    assert receiver.of(model)[1]["body"]["alarm"]["state"] == "resolved"
    assert TOKEN not in ctl.log.read_text()


def test_alarm_events_older_than_the_max_age_are_skipped_not_sent(
    ctl: ControllerProcess, receiver: Receiver
) -> None:
    """A webhook configured on a controller with a history: the last day's events are sent, older
    ones are marked skipped, counted and logged (an alarm open now still notifies its resolution)."""
    model = f"hook-{uuid.uuid4().hex[:8]}"
    now, day = time.time(), 86_400
    skipped_before = _sent(ctl, "fired", "skipped"), _sent(ctl, "resolved", "skipped")
    history = [(now - 2 * day, now - 2 * day + 600), (now - 2 * day, now - 60), (now - 3600, None)]
    engine = make_engine(ctl.database_url)
    try:
        with Session(engine) as session:
            for fired_at, resolved_at in history:
                session.add(
                    Alarm(
                        model_id=model,
                        site_id=f"site-{len(session.new)}",
                        kind="accuracy",
                        value=0.5,
                        threshold=0.8,
                        samples=40,
                        action="ask",
                        fired_at=fired_at,
                        last_value=0.5,
                        evaluated_at=resolved_at or fired_at,
                        resolved_at=resolved_at,
                    )
                )
            session.commit()

        def notices() -> list[tuple[str | None, str | None]]:
            with Session(engine) as session:
                rows = session.exec(select(Alarm).where(Alarm.model_id == model).order_by(col(Alarm.id)))
                return [(a.fired_notice, a.resolved_notice) for a in rows]

        expected = [("skipped", "skipped"), ("skipped", "delivered"), ("delivered", None)]
        _until("the events marked skipped or delivered", lambda: notices() == expected)
        time.sleep(1.0)  # more passes: nothing else is sent
        assert notices() == expected
        with Session(engine) as session:
            ids = list(session.exec(select(Alarm.id).where(Alarm.model_id == model).order_by(col(Alarm.id))))
    finally:
        engine.dispose()
    assert [r["body"]["id"] for r in receiver.of(model, delivered=False)] == [
        f"{ids[1]}:alarm.resolved",
        f"{ids[2]}:alarm.fired",
    ]
    assert (_sent(ctl, "fired", "skipped"), _sent(ctl, "resolved", "skipped")) == (
        skipped_before[0] + 2,
        skipped_before[1] + 1,
    )
    (logged,) = _log_lines(ctl, f"{ids[0]}:alarm.fired")
    assert "3 events older than 86400 s skipped" in logged
    assert f"{ids[0]}:alarm.resolved" in logged and f"{ids[1]}:alarm.fired" in logged
