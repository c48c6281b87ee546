"""Rollouts over a real controller process: waves advance as devices report, gates fail them, operators
pause, resume and abort, and a restart changes nothing. Devices are played through the ingest API."""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from pathlib import Path

import pytest
from sqlalchemy import create_engine, update
from sqlmodel import Session, col

from cloud_controller import rollouts
from cloud_controller.rollout_models import Rollout
from cloud_controller.waves import position
from fleet_protocol import ModelReason, OtaState
from simulators.controller import ControllerProcess
from tests.controller.conftest import Controller, as_controller, database_url, start_process
from tests.controller.rollout_fleet import NEW, OLD, Fleet, actions, make_fleet, on, shadow
from tests.controller.test_metrics import _metric, _scrape


def _members(fleet: Fleet, rollout_id: str, count: int) -> set[str]:
    """The ``count`` first devices in the rollout's order: sha256 of rollout and device id."""
    return set(sorted(fleet.devices, key=lambda d: position(rollout_id, d))[:count])


def test_waves_advance_as_devices_report_promoted_until_the_group_runs_the_new_version(
    controller: Controller, bundles, signing_key, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    fleet = make_fleet(controller, bundles, signing_key, tmp_path)
    before = fleet.desired()
    assert on(before, OLD) == set(fleet.devices) and before["lathe-0"]["model"] is None

    rollout = fleet.create(
        waves=[{"percent": 10}, {"count": 10}, {"percent": 100}],
        soak_s=0.3,
        gates={"min_installed": 1.0, "install_deadline_s": 60},
    )
    assert re.fullmatch(r"r-[0-9a-f]{8}", rollout["id"])
    assert rollout["previous"] == {"model_id": "sensor-mlp", "version": OLD}
    assert (rollout["state"], rollout["current_wave"], rollout["group"]) == ("running", 0, "presses")
    rid = rollout["id"]

    # Wave 0: 10 % of 20 devices, the first two in the rollout's order, with the rollout's directive.
    wave0 = fleet.desired()
    assert on(wave0, NEW) == _members(fleet, rid, 2)
    for device in _members(fleet, rid, 2):
        assert wave0[device]["model"]["rollout"]["rollout_id"] == rid
        assert wave0[device]["revision"] > before[device]["revision"]
    for device in set(fleet.devices) - _members(fleet, rid, 2):
        assert wave0[device] == before[device], "the rest of the group keeps its version and revision"
    first = fleet.status(rid)["waves"][0]
    assert (first["target"], first["devices"], first["by_state"]["pending"]) == (2, 2, 2)

    fleet.report(_members(fleet, rid, 1), OtaState.DOWNLOADING, rid)
    fleet.report(_members(fleet, rid, 2) - _members(fleet, rid, 1), OtaState.PROMOTED, rid)
    time.sleep(0.5)
    held = fleet.status(rid)
    assert held["current_wave"] == 0, "one of two installed is below min_installed 1.0"
    assert held["waves"][0]["by_state"]["downloading"] == 1 and held["waves"][0]["gates"]["installed"] == 0.5

    fleet.report(_members(fleet, rid, 2), OtaState.PROMOTED, rid)
    fleet.wait(rid, lambda s: s["current_wave"] == 1)
    wave1 = fleet.desired()
    assert on(wave1, NEW) == _members(fleet, rid, 10)
    for device in _members(fleet, rid, 2):
        assert wave1[device] == wave0[device], "an unchanged assignment keeps its revision"
    for device in _members(fleet, rid, 10) - _members(fleet, rid, 2):
        assert wave1[device]["revision"] > wave0[device]["revision"]

    fleet.report(_members(fleet, rid, 10), OtaState.PROMOTED, rid)
    fleet.wait(rid, lambda s: s["current_wave"] == 2)
    assert on(fleet.desired(), NEW) == set(fleet.devices)
    fleet.report(fleet.devices, OtaState.PROMOTED, rid)
    done = fleet.wait(rid, lambda s: s["state"] == "succeeded")

    after = fleet.desired()
    assert on(after, NEW) == set(fleet.devices) and after["lathe-0"]["model"] is None
    for device in fleet.devices:
        # The group's deployment now: no rollout directive, a higher revision.
        assert after[device]["model"]["rollout"] is None
        assert after[device]["revision"] > wave1[device]["revision"]
    assert actions(done) == ["start", "advance", "advance", "complete"]
    holds = [(d["wave"], d["reason"]) for d in done["decisions"] if d["action"] == "hold"]
    assert len(holds) == len(set(holds)), "a hold is recorded once per reason and wave"
    advance = next(d for d in done["decisions"] if d["action"] == "advance")
    assert (advance["wave"], advance["values"]["installed"], advance["values"]["devices"]) == (0, 1.0, 2)
    assert [(w["target"], w["devices"], w["by_state"]["promoted"]) for w in done["waves"]] == [
        (2, 2, 2),
        (10, 10, 10),
        (20, 20, 20),
    ]
    with fleet.client() as client:
        deployments = client.get("/api/v1/deployments").json()
        audit = client.get("/api/v1/audit", params={"resource": f"rollout/{rid}"}).json()
        listed = client.get("/api/v1/rollouts", params={"state": "succeeded"}).json()
        device = client.get(f"/api/v1/devices/{fleet.devices[0]}").json()
    assert (deployments[0]["version"], deployments[0]["created_by"]) == (NEW, f"rollout-engine:{rid}")
    with fleet.client() as client:
        deployed = client.get(
            "/api/v1/audit", params={"resource": f"deployment/{deployments[0]['id']}"}
        ).json()
    assert [(e["actor"], e["action"]) for e in deployed] == [("rollout-engine", "deploy")]
    assert {(e["actor"], e["action"]) for e in audit} >= {
        ("operator:test-operator", "create"),
        ("operator:test-operator", "rollout.start"),
        ("rollout-engine", "rollout.advance"),
        ("rollout-engine", "rollout.complete"),
    }
    assert [r["id"] for r in listed["data"]] == [rid] and listed["count"] == 1
    assert (device["model_version"], device["ota"]["state"], device["ota"]["rollout_id"]) == (
        NEW,
        "promoted",
        rid,
    )
    metrics = _scrape(controller)
    assert _metric(metrics, "edgefleet_rollouts", state="succeeded") == 1.0
    assert _metric(metrics, "edgefleet_rollouts", state="running") == 0.0
    assert _metric(metrics, "edgefleet_devices_by_ota_state", state="promoted") == 20.0


def test_devices_rolling_back_fail_the_rollout_and_every_device_gets_the_previous_version(
    sqlite_controller: Controller, bundles, signing_key, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    fleet = make_fleet(sqlite_controller, bundles, signing_key, tmp_path, devices=10)
    rid = fleet.create(waves=[{"percent": 50}, {"percent": 100}], soak_s=30, gates={"max_failed": 0.2})["id"]
    started = fleet.desired()
    wave = _members(fleet, rid, 5)
    assert on(started, NEW) == wave
    failing = sorted(wave)[:2]
    fleet.report(sorted(wave)[2:3], OtaState.PROMOTED, rid)
    fleet.report(failing, OtaState.ROLLED_BACK, rid, reason=ModelReason.SMOKE_TEST_FAILED)
    metrics = _scrape(sqlite_controller)
    assert _metric(metrics, "edgefleet_devices_by_ota_state", state="rolled_back") == 2.0

    failed = fleet.wait(rid, lambda s: s["state"] == "failed")
    verdict = failed["decisions"][-1]
    assert verdict["action"] == "abort"
    assert verdict["reason"] == "failed share 40.0% is above max_failed 20.0%"
    assert (verdict["values"]["failed"], verdict["values"]["installed"]) == (0.4, 0.2)
    assert failed["waves"][0]["by_state"]["rolled_back"] == 2
    back = fleet.desired()
    assert on(back, OLD) == set(fleet.devices), "every device of the rollout gets the previous version"
    for device in wave:
        assert back[device]["revision"] > started[device]["revision"]
        assert back[device]["model"]["rollout"] is None
    for device in set(fleet.devices) - wave:
        assert back[device] == started[device], "devices the rollout never reached are not touched"
    with fleet.client() as client:
        audit = client.get("/api/v1/audit", params={"resource": f"rollout/{rid}"}).json()
    assert audit[0]["actor"] == "rollout-engine" and audit[0]["action"] == "rollout.abort"


def test_shadow_agreement_below_the_gate_fails_the_rollout(
    sqlite_controller: Controller, bundles, signing_key, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    fleet = make_fleet(sqlite_controller, bundles, signing_key, tmp_path, devices=10)
    rid = fleet.create(
        waves=[{"count": 4}, {"percent": 100}],
        shadow_s=30,
        gates={"min_agreement": 0.9, "max_latency_ratio": 2.0},
    )["id"]
    directive = fleet.desired()[next(iter(_members(fleet, rid, 4)))]["model"]["rollout"]
    assert directive == {
        "rollout_id": rid,
        "shadow_s": 30.0,
        "min_agreement": 0.9,
        "max_latency_ratio": 2.0,
        "min_samples": 20,
    }
    agreeing, disagreeing = sorted(_members(fleet, rid, 4))[:2], sorted(_members(fleet, rid, 4))[2:]
    fleet.report(agreeing, OtaState.SHADOW, rid, shadow=shadow(0.95, 1.0, 1.5))
    time.sleep(0.5)
    assert fleet.status(rid)["state"] == "running", "a mean agreement of 0.95 passes"
    fleet.report(disagreeing, OtaState.SHADOW, rid, shadow=shadow(0.55, 1.0, 1.1))

    failed = fleet.wait(rid, lambda s: s["state"] == "failed")
    verdict = failed["decisions"][-1]
    assert verdict["reason"] == "mean shadow agreement 75.0% is below min_agreement 90.0%"
    assert verdict["values"]["agreement"] == 0.75
    assert verdict["values"]["latency_ratio"] == 1.3, "mean of 1.5 and 1.1 (two devices each)"
    assert failed["waves"][0]["by_state"]["shadow"] == 4
    assert on(fleet.desired(), OLD) == set(fleet.devices)


def test_operators_pause_resume_and_abort_and_a_group_has_one_active_rollout(
    sqlite_controller: Controller, bundles, signing_key, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    fleet = make_fleet(sqlite_controller, bundles, signing_key, tmp_path, devices=6)
    first = fleet.create(waves=[{"percent": 50}, {"percent": 100}], soak_s=0)
    rid = first["id"]
    with fleet.client() as client:
        second = client.post(
            "/api/v1/rollouts",
            json={"model_id": "sensor-mlp", "version": NEW, "group": "presses", "waves": [{"percent": 100}]},
        )
        deploy = client.post(
            "/api/v1/deployments", json={"group_id": fleet.group_id, "model_id": "sensor-mlp", "version": NEW}
        )
        paused = client.post(f"/api/v1/rollouts/{rid}/pause")
        again = client.post(f"/api/v1/rollouts/{rid}/pause")
    assert second.status_code == 409
    assert second.json()["detail"] == f"Group presses has an active rollout {rid} (running): abort it first"
    assert deploy.status_code == 409 and rid in deploy.json()["detail"]
    assert paused.status_code == 200 and paused.json()["state"] == "paused"
    with fleet.client("viewer") as viewer:
        refused = viewer.post(f"/api/v1/rollouts/{rid}/abort")
    assert (refused.status_code, refused.json()["detail"]) == (403, "Role viewer may not do this")
    assert again.status_code == 409
    assert again.json()["detail"] == f"Rollout {rid} is paused: only a running rollout can be paused"

    fleet.report(_members(fleet, rid, 3), OtaState.PROMOTED, rid)
    time.sleep(0.6)
    assert fleet.status(rid)["current_wave"] == 0, "a paused rollout does not advance"
    metrics = _scrape(sqlite_controller)
    assert _metric(metrics, "edgefleet_rollout_devices", rollout=rid, state="promoted") == 3.0
    assert _metric(metrics, "edgefleet_rollouts", state="paused") == 1.0
    with fleet.client() as client:
        assert client.post(f"/api/v1/rollouts/{rid}/resume").json()["state"] == "running"
    fleet.wait(rid, lambda s: s["current_wave"] == 1)
    assert on(fleet.desired(), NEW) == set(fleet.devices)
    with fleet.client() as client:
        aborted = client.post(f"/api/v1/rollouts/{rid}/abort")
        twice = client.post(f"/api/v1/rollouts/{rid}/abort")
    assert aborted.json()["state"] == "aborted"
    assert twice.status_code == 409
    assert (
        twice.json()["detail"] == f"Rollout {rid} is aborted: only a running or paused rollout can be aborted"
    )
    assert on(fleet.desired(), OLD) == set(fleet.devices)
    status = fleet.status(rid)
    assert actions(status) == ["start", "pause", "resume", "advance", "abort"]
    assert status["decisions"][-1]["reason"] == "aborted by operator:test-operator"
    # The group is free again.
    assert fleet.create(waves=[{"percent": 100}])["previous"] == {"model_id": "sensor-mlp", "version": OLD}


def test_an_abort_puts_hand_provisioned_devices_back_on_the_version_they_ran(
    sqlite_controller: Controller, bundles, signing_key, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """No deployment names 1.0.0: the devices were provisioned with it by hand and say they run it."""
    fleet = make_fleet(sqlite_controller, bundles, signing_key, tmp_path, devices=4, deployed=False)
    assert on(fleet.desired(), OLD) == set(), "nothing desired yet"
    created = fleet.create(waves=[{"percent": 100}], soak_s=60)
    assert created["previous"] == {"model_id": "sensor-mlp", "version": OLD}, "what the devices run"
    assert on(fleet.desired(), NEW) == set(fleet.devices)
    fleet.report(fleet.devices[:2], OtaState.PROMOTED, created["id"])
    with fleet.client() as client:
        assert client.post(f"/api/v1/rollouts/{created['id']}/abort").json()["state"] == "aborted"
    assert on(fleet.desired(), OLD) == set(fleet.devices), "every device back on 1.0.0, promoted or not"
    # A deployment made later wins over what the abort put back.
    with fleet.client() as client:
        answer = client.post(
            "/api/v1/deployments", json={"group_id": fleet.group_id, "model_id": "sensor-mlp", "version": NEW}
        )
    assert answer.status_code == 201, answer.text
    assert on(fleet.desired(), NEW) == set(fleet.devices)


def test_an_abort_that_races_the_engines_step_is_taken_on_the_rollout_as_it_now_is(
    sqlite_controller: Controller, bundles, signing_key, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """The engine writes a step between the operator's read and write (as a busy engine may): the
    abort is decided again on the new step, not refused with a 409."""
    fleet = make_fleet(sqlite_controller, bundles, signing_key, tmp_path, devices=4)
    rid = fleet.create(waves=[{"percent": 100}], soak_s=60)["id"]
    engine = create_engine(sqlite_controller.database_url)
    raced = []
    measure = rollouts.current

    def engine_steps_first(session: Session, rollout: Rollout) -> object:
        if not raced:  # once: the rollout's step moves under the operator's feet
            with engine.begin() as other:
                other.execute(update(Rollout).where(col(Rollout.id) == rid).values(step=Rollout.step + 1))
            raced.append(True)
        return measure(session, rollout)

    monkeypatch.setattr(rollouts, "current", engine_steps_first)
    with Session(engine) as session:
        aborted = rollouts.abort(session=session, rollout_id=rid, actor="operator:test")
    assert raced and aborted.state == "aborted"
    assert actions(fleet.status(rid)) == ["start", "abort"], "decided once, on the step the engine left"


def test_devices_that_join_the_group_during_a_rollout_are_in_it_by_their_place_in_its_order(
    sqlite_controller: Controller, bundles, signing_key, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    fleet = make_fleet(sqlite_controller, bundles, signing_key, tmp_path, devices=8)
    rid = fleet.create(waves=[{"percent": 50}, {"percent": 100}], soak_s=60)["id"]
    # Wave 0 holds the half of the group first in the rollout's order: everything before its threshold.
    ordered = sorted(position(rid, d) for d in fleet.devices)
    threshold = ordered[len(ordered) // 2 - 1] + 1
    joined: list[str] = []
    with fleet.client() as client:
        while len(joined) < 40:  # until joiners fall on both sides of the threshold
            name = f"press-new-{len(joined):02d}"
            answer = client.post(
                "/api/v1/devices", json={"id": name, "site_id": "site-a", "labels": {"line": "press"}}
            )
            assert answer.status_code == 201, answer.text
            joined.append(name)
            sides = {position(rid, d) < threshold for d in joined}
            if len(joined) >= 6 and sides == {True, False}:
                break
    desired = fleet.desired()
    inside = {d for d in joined if position(rid, d) < threshold}
    assert inside and inside != set(joined)
    assert on(desired, NEW) & set(joined) == inside, "a joiner inside wave 0 gets the new version"
    assert on(desired, OLD) & set(joined) == set(joined) - inside, "the others keep the group's version"
    with fleet.client() as client:
        assert client.post(f"/api/v1/rollouts/{rid}/abort").json()["state"] == "aborted"
    assert on(fleet.desired(), OLD) >= set(joined), "and an abort puts them back with the rest"


def test_rollout_input_errors_name_what_is_wrong(
    sqlite_controller: Controller, bundles, signing_key, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    make_fleet(sqlite_controller, bundles, signing_key, tmp_path, devices=2)
    base = {"model_id": "sensor-mlp", "version": NEW, "group": "presses", "waves": [{"percent": 100}]}
    cases = [
        ({**base, "group": "nope"}, 404, "Group nope not found"),
        ({**base, "version": "9.9.9"}, 404, "Model version sensor-mlp@9.9.9 not found"),
        ({**base, "version": OLD}, 409, "Group presses runs sensor-mlp@1.0.0 already"),
    ]
    with sqlite_controller.client("operator") as client:
        for body, code, detail in cases:
            response = client.post("/api/v1/rollouts", json=body)
            assert (response.status_code, response.json()["detail"]) == (code, detail)
        shrinking = client.post(
            "/api/v1/rollouts", json={**base, "waves": [{"percent": 50}, {"percent": 10}]}
        )
        empty = client.post("/api/v1/rollouts", json={**base, "waves": [{"percent": 0}]})
        both = client.post("/api/v1/rollouts", json={**base, "waves": [{"percent": 5, "count": 3}]})
        gate = client.post("/api/v1/rollouts", json={**base, "gates": {"min_installed": 1.5}})
        missing = client.get("/api/v1/rollouts/r-00000000")
        malformed = client.get("/api/v1/rollouts/nope")
        listed = client.get("/api/v1/rollouts", params={"state": "sideways"})
    assert (
        shrinking.status_code == 422
        and "waves.1.percent: 10 is below the previous wave's 50" in shrinking.text
    )
    assert empty.status_code == 422 and "percent" in str(empty.json()["detail"][0]["loc"])
    assert both.status_code == 422 and "Extra inputs are not permitted" in both.text
    assert gate.status_code == 422 and gate.json()["detail"][0]["loc"] == ["body", "gates", "min_installed"]
    assert (missing.status_code, missing.json()["detail"]) == (404, "Rollout r-00000000 not found")
    assert malformed.status_code == 422 and listed.status_code == 422


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_restart_keeps_wave_membership_and_the_engine_resumes_without_repeating_decisions(
    kind: str, tmp_path: Path, public_key_file: Path, bundles, signing_key
) -> None:  # type: ignore[no-untyped-def]
    for url in database_url(kind, tmp_path):
        process = start_process(tmp_path, url, public_key_file)
        try:
            _restart(process, tmp_path, bundles, signing_key)
        finally:
            process.stop()


def _restart(process: ControllerProcess, tmp_path: Path, bundles, signing_key) -> None:  # type: ignore[no-untyped-def]
    fleet = make_fleet(as_controller(process, tmp_path), bundles, signing_key, tmp_path, devices=10)
    rid = fleet.create(waves=[{"percent": 30}, {"percent": 100}], soak_s=1.0)["id"]
    fleet.report(_members(fleet, rid, 2), OtaState.PROMOTED, rid)
    before = fleet.wait(rid, lambda s: s["decisions"][-1]["action"] == "hold")
    desired = fleet.desired()
    with fleet.client("gateway") as gateway:
        etag = gateway.get("/api/v1/sites/site-a/desired").headers["ETag"]

    process.stop()
    process.start()
    time.sleep(0.5)  # a few ticks of the new process
    with fleet.client("gateway") as gateway:
        assert gateway.get("/api/v1/sites/site-a/desired", headers={"If-None-Match": etag}).status_code == 304
    assert fleet.desired() == desired, "same members, same revisions"
    assert on(desired, NEW) == _members(fleet, rid, 3)
    assert fleet.status(rid)["decisions"] == before["decisions"], "the new engine repeats no decision"

    fleet.report(_members(fleet, rid, 3), OtaState.PROMOTED, rid)
    fleet.wait(rid, lambda s: s["current_wave"] == 1)
    fleet.report(fleet.devices, OtaState.PROMOTED, rid)
    done = fleet.wait(rid, lambda s: s["state"] == "succeeded")
    assert actions(done) == ["start", "advance", "complete"]
    decided = [(d["wave"], d["action"], d["reason"]) for d in done["decisions"]]
    assert len(decided) == len(set(decided))


def test_concurrent_polls_while_assignments_change_never_reuse_a_revision(
    controller: Controller, bundles, signing_key, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    fleet = make_fleet(controller, bundles, signing_key, tmp_path, devices=30)
    seen: dict[tuple[str, int], set[str]] = {}
    stop = threading.Event()

    def poll() -> list[dict[str, int]]:
        answers = []
        with fleet.client("gateway") as gateway:
            while not stop.is_set():
                states = gateway.get("/api/v1/sites/site-a/desired").json()["states"]
                answers.append({s["device_id"]: s["revision"] for s in states})
                for s in states:
                    version = s["model"]["version"] if s["model"] else "none"
                    seen.setdefault((s["device_id"], s["revision"]), set()).add(version)
        return answers

    with ThreadPoolExecutor(4) as pool:
        pollers = [pool.submit(poll) for _ in range(4)]
        with fleet.client() as client:
            for version in (NEW, OLD, NEW, OLD, NEW):
                deployed = client.post(
                    "/api/v1/deployments",
                    json={"group_id": fleet.group_id, "model_id": "sensor-mlp", "version": version},
                )
                assert deployed.status_code == 201
                time.sleep(0.2)
        stop.set()
        answers = [p.result() for p in pollers]
    assert {key: versions for key, versions in seen.items() if len(versions) > 1} == {}, (
        "one revision, one assignment"
    )
    for poller in answers:
        for earlier, later in pairwise(poller):
            assert all(later[d] >= earlier[d] for d in earlier), "a device's revision never goes back"
    assert on(fleet.desired(), NEW) == set(fleet.devices)
