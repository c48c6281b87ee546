"""The rules a rollout follows, without a server: wave membership and the engine's decisions.

Time is driven, not slept: `decide` takes ``now``; thresholds come from positions alone.
"""

from __future__ import annotations

from cloud_controller.rollout_engine import SOAKING, WAITING, decide
from cloud_controller.rollout_gates import Report, Shadow, measure
from cloud_controller.rollout_models import Action, GateValues
from cloud_controller.waves import FULL, position, target, threshold

GATES = {
    "install_deadline_s": 300.0,
    "min_installed": 0.9,
    "min_agreement": 0.8,
    "max_latency_ratio": 2.0,
    "max_failed": 0.2,
}


def _values(**changes: object) -> GateValues:
    return GateValues(
        **{
            "installed": 0.0,
            "agreement": None,
            "latency_ratio": None,
            "non_finite": 0,
            "failed": 0.0,
            **changes,
        }
    )


def test_a_percent_target_rounds_up_and_a_count_stops_at_the_group() -> None:
    assert [target({"percent": p}, 20) for p in (1, 10, 7.5, 100)] == [1, 2, 2, 20]
    assert target({"percent": 7}, 100) == 7, "7 % of 100 is 7, whatever binary floats make of it"
    assert (target({"count": 50}, 20), target({"count": 5}, 20), target({"percent": 10}, 0)) == (20, 5, 0)


def test_thresholds_take_the_first_devices_in_order_and_only_grow() -> None:
    devices = [f"d{i}" for i in range(20)]
    ordered = sorted(devices, key=lambda d: position("r-00000001", d))
    positions = [position("r-00000001", d) for d in devices]
    first, count = threshold({"percent": 10}, positions, 0)
    assert count == 2
    assert {d for d in devices if position("r-00000001", d) < first} == set(ordered[:2])
    # A later wave smaller than the one before (a count after a percent) takes nobody back.
    again, _ = threshold({"count": 1}, positions, first)
    assert again == first
    assert threshold({"percent": 100}, positions, first) == (FULL, 20)
    assert threshold({"percent": 50}, [], first) == (first, 0), "an empty group keeps the threshold"


def test_positions_depend_on_the_rollout_and_the_device_only() -> None:
    assert position("r-00000001", "press-01") == position("r-00000001", "press-01")
    assert position("r-00000001", "press-01") != position("r-00000002", "press-01")
    # Devices joining the group after a wave started do not move anybody out of it.
    devices = [f"d{i}" for i in range(10)]
    limit, _ = threshold({"percent": 30}, [position("r-1", d) for d in devices], 0)
    members = {d for d in devices if position("r-1", d) < limit}
    joined = devices + [f"new{i}" for i in range(100)]
    assert members <= {d for d in joined if position("r-1", d) < limit}


def test_measure_counts_installs_within_the_deadline_and_means_shadow_figures() -> None:
    devices = [
        Report("a", 1, "promoted", 100.0, Shadow(0.9, 1.5, 0)),
        Report("b", 2, "promoted", 500.0, Shadow(0.7, 1.1, 0)),  # installed after the deadline
        Report("c", 3, "rolled_back", None, Shadow(None, None, 2)),
        Report("d", 4, "promoted", None, None),  # runs the version without an update: installed
        Report("e", 99, "pending", None, None),  # beyond the threshold: another wave
    ]
    measured = measure(devices, threshold=10, clock=0.0, deadline_s=300.0)
    assert measured.devices == 4
    assert measured.by_state.promoted == 3 and measured.by_state.rolled_back == 1
    assert measured.gates == GateValues(
        installed=0.5, agreement=0.8, latency_ratio=1.3, non_finite=2, failed=0.25
    )


def test_decide_fails_on_any_error_condition_before_looking_at_installs() -> None:
    wave = {"clock": 0.0, "reached_at": None}
    cases = {
        "failed share 30.0% is above max_failed 20.0%": _values(installed=1.0, failed=0.3),
        "mean shadow agreement 70.0% is below min_agreement 80.0%": _values(installed=1.0, agreement=0.7),
        "mean latency ratio 2.50x is above max_latency_ratio 2.00x": _values(
            installed=1.0, latency_ratio=2.5
        ),
        "the new model gave 3 non-finite outputs in shadow": _values(installed=1.0, non_finite=3),
    }
    for reason, values in cases.items():
        verdict = decide(gates=GATES, soak_s=0, values=values, wave=wave, now=10.0)
        assert (verdict.action, verdict.reason) == (Action.ABORT, reason)
    at_limit = decide(gates=GATES, soak_s=0, values=_values(installed=1.0, failed=0.2), wave=wave, now=1.0)
    assert at_limit.action is Action.ADVANCE, "max_failed is the most that may fail"


def test_decide_soaks_then_advances_and_pauses_past_the_install_deadline() -> None:
    wave = {"clock": 1000.0, "reached_at": None}
    assert (
        decide(gates=GATES, soak_s=60, values=_values(installed=0.5), wave=wave, now=1010.0).reason == WAITING
    )
    reached = decide(gates=GATES, soak_s=60, values=_values(installed=0.95), wave=wave, now=1020.0)
    assert (reached.action, reached.reason, reached.reached_at) == (Action.HOLD, SOAKING, 1020.0)
    wave["reached_at"] = 1020.0
    assert (
        decide(gates=GATES, soak_s=60, values=_values(installed=0.95), wave=wave, now=1079.0).action
        is Action.HOLD
    )
    done = decide(gates=GATES, soak_s=60, values=_values(installed=0.95), wave=wave, now=1080.0)
    assert (done.action, done.reached_at) == (Action.ADVANCE, 1020.0)
    # Installs fell below the bar again: the soak starts over when they are back.
    assert (
        decide(gates=GATES, soak_s=60, values=_values(installed=0.5), wave=wave, now=1090.0).reached_at
        is None
    )
    late = decide(gates=GATES, soak_s=60, values=_values(installed=0.5), wave={"clock": 1000.0}, now=1301.0)
    assert late.action is Action.PAUSE
    assert late.reason == "install deadline of 300 s passed with 50.0% installed, below min_installed 90.0%"
