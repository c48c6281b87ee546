"""The invariants of over-the-air updates fail when what the brokers delivered breaks them.

Views are built as the observer builds them (runs of record versions, ``ota.*`` events, desired
states), each breaking one invariant; a clean one passes them all.
"""

from __future__ import annotations

from fleet_protocol import Health, OtaState, OtaStatus, ReportedState
from simulators.fleet_view import Assignment, FleetView, OtaEvent, VersionRun
from simulators.ota_checks import judge
from simulators.rollouts import RolloutOutcome

DEVICE, OTHER = "site-0-dev-0001", "site-0-dev-0002"
SHA = "a" * 64
ROLLOUT = "rollout_ended_as_expected"


def _names(verdicts: dict[str, bool | None]) -> dict[str, bool | None]:
    """Shorter keys for the asserts."""
    return {
        ROLLOUT: verdicts["every_rollout_ended_as_expected_devices_back_with_a_reason"],
        "unverified": verdicts["no_device_loaded_an_unverified_bundle"],
        "attributed": verdicts["every_record_attributed_to_the_model_version_that_made_it"],
        "downloads": verdicts["each_site_downloaded_each_bundle_once"],
    }


def _state(device: str, version: str) -> ReportedState:
    return ReportedState(
        device_id=device, site="site-0", online=True, health=Health.OK, model_version=version
    )


def _event(kind: str, version: str, ts: float, reason: str | None = None) -> OtaEvent:
    return OtaEvent(ts, kind, version, SHA, reason, "r-00000001")


def _good_view() -> FleetView:
    """DEVICE went 1.0.0 -> 1.1.0 (promoted); OTHER was sent the bad 1.2.0 and rolled it back."""
    view = FleetView()
    view.version_runs = {
        DEVICE: [VersionRun("1.0.0", 1, 10, 0.0, 9.0, 10), VersionRun("1.1.0", 11, 20, 10.0, 19.0, 10)],
        OTHER: [VersionRun("1.0.0", 1, 20, 0.0, 19.0, 20)],
    }
    view.ota[DEVICE] = [
        _event("ota.downloading", "1.1.0", 9.0),
        _event("ota.verified", "1.1.0", 9.2),
        _event("ota.shadow", "1.1.0", 9.3),
        _event("ota.promoted", "1.1.0", 9.9),
    ]
    view.ota[OTHER] = [
        _event("ota.verified", "1.2.0", 5.0),
        _event("ota.rolled_back", "1.2.0", 6.0, "smoke_test_failed"),
    ]
    view.desired[DEVICE] = [Assignment(1, "1.0.0", "b" * 64, None), Assignment(2, "1.1.0", "c" * 64, "r-1")]
    view.desired[OTHER] = [Assignment(1, "1.0.0", "b" * 64, None), Assignment(3, "1.2.0", "d" * 64, "r-2")]
    view.desired[OTHER].append(Assignment(4, "1.0.0", "b" * 64, None))
    view.states = {DEVICE: _state(DEVICE, "1.1.0"), OTHER: _state(OTHER, "1.0.0")}
    return view


def _rollouts() -> list[RolloutOutcome]:
    good = RolloutOutcome("rollout", "1.1.0", None, {}, id="r-1", previous="1.0.0", state="succeeded")
    bad = RolloutOutcome(
        "bad_rollout", "1.2.0", "nan_outputs", {}, id="r-2", previous="1.0.0", state="failed"
    )
    bad.waves = [{"index": 0, "started_at": 5.0}, {"index": 1, "started_at": None}]
    return [good, bad]


def _judge(
    view: FleetView, rollouts: list[RolloutOutcome] | None = None, **kwargs: object
) -> dict[str, bool | None]:
    args: dict[str, object] = {
        "site_of": {DEVICE: "site-0", OTHER: "site-0"},
        "killed": {},
        "fetches": {"site-0": 3.0},  # bundles b, c and d, once each
        "planted": {},
        "complete": True,
        **kwargs,
    }
    return _names(judge(rollouts or _rollouts(), view, **args).verdicts)  # type: ignore[arg-type]


def test_a_clean_view_passes_every_update_invariant() -> None:
    assert _judge(_good_view()) == {ROLLOUT: True, "unverified": True, "attributed": True, "downloads": True}


def test_records_switching_back_and_forth_without_an_ota_event_fail_attribution() -> None:
    view = _good_view()
    view.version_runs[DEVICE] = [
        VersionRun("1.0.0", 1, 5, 0.0, 4.0, 5),
        VersionRun("1.1.0", 6, 8, 5.0, 7.0, 3),
        VersionRun("1.0.0", 9, 10, 8.0, 9.0, 2),  # no rollback said so
        VersionRun("1.1.0", 11, 20, 10.0, 19.0, 10),
    ]
    assert _judge(view)["attributed"] is False


def test_one_switch_without_its_event_is_allowed_per_kill_of_the_devices_process() -> None:
    view = _good_view()
    view.ota[DEVICE] = [e for e in view.ota[DEVICE] if e.kind != "ota.promoted"]  # died with the process
    assert _judge(view)["attributed"] is False
    assert _judge(view, killed={DEVICE: 1})["attributed"] is True


def test_a_record_from_a_version_stopped_at_its_canary_fails_attribution() -> None:
    view = _good_view()
    view.version_runs[OTHER].append(VersionRun("1.2.0", 21, 21, 20.0, 20.0, 1))
    view.ota[OTHER].insert(1, _event("ota.promoted", "1.2.0", 5.5))
    assert _judge(view)["attributed"] is False


def test_a_canary_device_left_on_the_bad_version_or_without_a_final_reason_fails() -> None:
    view = _good_view()
    view.states[OTHER] = _state(OTHER, "1.2.0")
    assert _judge(view)[ROLLOUT] is False

    view = _good_view()
    view.ota[OTHER] = [_event("ota.verified", "1.2.0", 5.0)]  # the update never ended
    assert _judge(view)[ROLLOUT] is False
    assert _judge(view, complete=False)[ROLLOUT] is None, "an incomplete view is not judged"


def test_a_canary_update_cancelled_by_the_abort_passes_but_one_still_shadowing_fails() -> None:
    """The controller's gates may abort before a device's own: it stops and says ota.cancelled."""
    view = _good_view()
    view.ota[OTHER] = [
        _event("ota.verified", "1.2.0", 5.0),
        _event("ota.shadow", "1.2.0", 5.1),
        _event("ota.cancelled", "1.2.0", 5.5),
    ]
    assert _judge(view)[ROLLOUT] is True
    view.ota[OTHER].pop()  # shadowing still, as far as anyone can tell
    assert _judge(view)[ROLLOUT] is False
    rollouts = _rollouts()
    rollouts[1].state = "running"  # a cancel is an answer only once the rollout failed
    view.ota[OTHER].append(_event("ota.cancelled", "1.2.0", 5.5))
    assert _judge(view, rollouts)[ROLLOUT] is False


def test_a_bad_rollout_that_went_past_its_canary_fails() -> None:
    rollouts = _rollouts()
    rollouts[1].waves[1]["started_at"] = 8.0
    assert _judge(_good_view(), rollouts)[ROLLOUT] is False


def test_a_tampered_bundle_shadowed_fails_and_one_refused_for_its_digest_passes() -> None:
    rollouts = _rollouts()
    rollouts[1].defect = "tampered_signature"
    view = _good_view()
    view.ota[OTHER] = [_event("ota.refused", "1.2.0", 6.0, "digest_mismatch")]
    view.states[OTHER] = _state(OTHER, "1.0.0").model_copy(
        update={
            "ota": OtaStatus(
                state=OtaState.REFUSED,
                model_id="sensor-mlp",
                version="1.2.0",
                manifest_sha256=SHA,
                reason="digest_mismatch",
            )
        }
    )
    assert _judge(view, rollouts)["unverified"] is True

    view.ota[OTHER] = [_event("ota.verified", "1.2.0", 5.0), _event("ota.shadow", "1.2.0", 5.1)]
    view.ota[OTHER].append(_event("ota.rolled_back", "1.2.0", 6.0, "shadow_gate_failed"))
    assert _judge(view, rollouts)["unverified"] is False


def test_shadowing_a_bundle_never_verified_fails_unless_the_process_was_killed() -> None:
    view = _good_view()
    view.ota[DEVICE] = [e for e in view.ota[DEVICE] if e.kind != "ota.verified"]
    assert _judge(view)["unverified"] is False
    assert _judge(view, killed={DEVICE: 1})["unverified"] is True


def test_a_site_that_downloaded_a_bundle_twice_or_fetched_a_planted_one_fails() -> None:
    # The desired states named bundles b, c and d.
    assert _judge(_good_view(), fetches={"site-0": 3.0})["downloads"] is True
    assert _judge(_good_view(), fetches={"site-0": 4.0})["downloads"] is False
    assert _judge(_good_view(), fetches={"site-0": 3.0}, planted={"site-0": {"d" * 64}})["downloads"] is False
    assert _judge(_good_view(), fetches={"site-0": 2.0}, planted={"site-0": {"d" * 64}})["downloads"] is True


def test_a_canary_device_a_learning_job_moved_on_since_passes_only_on_that_jobs_version() -> None:
    """After the bad rollout, a job's rollout to the device's site may give it a newer version."""
    view = _good_view()
    view.states[OTHER] = _state(OTHER, "1.2.1")
    assert _judge(view)[ROLLOUT] is False, "on a version no rollout explains"
    assert _judge(view, moved_on={OTHER: "1.2.1"})[ROLLOUT] is True
    assert _judge(view, moved_on={OTHER: "1.2.2"})[ROLLOUT] is False, "another job's version"
    view.states[OTHER] = _state(OTHER, "1.2.0")
    assert _judge(view, moved_on={OTHER: "1.2.1"})[ROLLOUT] is False, "still on the bad version"


def test_a_canary_device_that_promoted_a_slow_version_before_the_abort_passes_a_nan_one_fails() -> None:
    """A latency or agreement gate judged on one device's few readings may pass; the canary's gates
    catch it and the abort puts the device back. A NaN model must be caught on the device itself."""
    view = _good_view()
    view.version_runs[OTHER] = [
        VersionRun("1.0.0", 1, 10, 0.0, 9.0, 10),
        VersionRun("1.2.0", 11, 15, 10.0, 14.0, 5),
        VersionRun("1.0.0", 16, 20, 15.0, 19.0, 5),
    ]
    view.ota[OTHER] = [
        _event("ota.verified", "1.2.0", 5.0),
        _event("ota.shadow", "1.2.0", 5.1),
        _event("ota.promoted", "1.2.0", 9.9),
        _event("ota.verified", "1.0.0", 14.5),
        _event("ota.promoted", "1.0.0", 14.9),  # the abort sent it back to the previous version
    ]
    nan = _judge(view)
    assert nan[ROLLOUT] is False and nan["attributed"] is False
    rollouts = _rollouts()
    rollouts[1].defect = "slow_10x"
    slow = _judge(view, rollouts)
    assert slow[ROLLOUT] is True and slow["attributed"] is True
    view.states[OTHER] = _state(OTHER, "1.2.0")  # not put back: fails, whatever the defect
    assert _judge(view, rollouts)[ROLLOUT] is False
