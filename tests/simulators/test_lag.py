"""The simulator's own lag: when it crossed the limit, with how many devices, and how many it held."""

from __future__ import annotations

import asyncio

from simulators.lag import FleetPace, LagMonitor
from simulators.paced_source import PacedSource


class Pace:
    """The fleet's pace as a test sets it, second by second."""

    def __init__(self) -> None:
        self.now = FleetPace(devices=0, due_per_s=0.0, behind=0.0, given=0)

    def __call__(self) -> FleetPace:
        return self.now


def _monitor(limit_s: float = 2.0) -> tuple[LagMonitor, Pace]:
    pace = Pace()
    monitor = LagMonitor(limit_s, pace)
    monitor.start_judging()
    return monitor, pace


def test_a_fleet_on_schedule_is_not_behind() -> None:
    monitor, pace = _monitor()
    for second in range(10):
        pace.now = FleetPace(devices=50, due_per_s=100.0, behind=20.0, given=100 * second)
        monitor.sample(1000.0 + second, loop_delay_s=0.05)
    monitor.event_fired("broker_restart", 3.0, 3.1, now=1003.1)

    verdict = monitor.verdict(origin=1000.0)

    assert verdict["behind"] is False and verdict["message"] is None
    assert verdict["readings_behind_max_s"] == 0.2
    assert verdict["event_lateness_max_s"] == 0.1


def test_sensors_behind_schedule_name_the_devices_running_and_how_many_the_machine_held() -> None:
    monitor, pace = _monitor()
    # 200 devices at 2 Hz, then 400 from second 5 that make nothing: a second more behind each second.
    for second in range(10):
        devices = 200 if second < 5 else 400
        behind = 0.0 if second < 5 else 800.0 * (second - 4)
        given = 400 * second if second < 5 else 2000  # then no reading at all
        pace.now = FleetPace(devices=devices, due_per_s=2.0 * devices, behind=behind, given=given)
        monitor.sample(1000.0 + second, loop_delay_s=0.3)

    verdict = monitor.verdict(origin=1000.0)

    assert verdict["behind"] is True
    assert (verdict["fell_behind_at_s"], verdict["fell_behind_with_devices"]) == (7.0, 400)
    # At the end 2,000 readings made of 6,000 due: a third of 400 devices.
    assert verdict["largest_fleet_held"] == 133
    assert "the simulator fell behind from 7 s on, with 400 devices running" in verdict["message"]
    assert "sensors fell 5.0 s behind their schedule" in verdict["message"]
    assert "held about 133 devices on schedule (sensors made 33% of the readings due)" in verdict["message"]


def test_an_event_fired_late_or_a_stalled_loop_is_falling_behind() -> None:
    late, pace = _monitor()
    pace.now = FleetPace(devices=10, due_per_s=20.0, behind=0.0, given=0)
    late.sample(1000.0, loop_delay_s=0.01)
    late.event_fired("drift", 20.0, 20.1, now=1020.1)
    late.event_fired("gateway_kill", 30.0, 35.5, now=1035.5)
    message = late.verdict(origin=1000.0)["message"]
    assert "fell behind from 36 s on, with 10 devices running" in message
    assert "1 event(s) fired late, gateway_kill at 30 s by 5.5 s" in message
    assert "This machine did not hold 10 devices on its schedule" in message

    stalled, pace = _monitor()
    pace.now = FleetPace(devices=10, due_per_s=20.0, behind=0.0, given=0)
    stalled.sample(1000.0, loop_delay_s=3.5)
    assert "the event loop stalled up to 3.5 s" in stalled.verdict(origin=1000.0)["message"]


def test_the_fleet_starting_up_names_the_most_devices_the_loop_held() -> None:
    monitor = LagMonitor(2.0, Pace())
    pace = monitor.pace
    assert isinstance(pace, Pace)
    # Agents load their models one after another: the loop is on time with 100 running, not 200.
    for second, (devices, delay) in enumerate([(50, 0.1), (100, 0.3), (200, 2.5), (300, 1.0)]):
        pace.now = FleetPace(devices=devices, due_per_s=2.0 * devices, behind=0.0, given=0)
        monitor.sample(990.0 + second, loop_delay_s=delay)
    monitor.start_judging()
    pace.now = FleetPace(devices=300, due_per_s=600.0, behind=0.0, given=0)
    monitor.sample(1000.0, loop_delay_s=3.0)

    verdict = monitor.verdict(origin=1000.0)

    assert verdict["behind"] is True and verdict["largest_fleet_held"] == 100
    assert "held about 100 devices on schedule (the most devices running before" in verdict["message"]


def test_the_drain_is_not_judged_against_a_schedule() -> None:
    monitor, pace = _monitor()
    pace.now = FleetPace(devices=10, due_per_s=20.0, behind=0.0, given=0)
    monitor.sample(1000.0, loop_delay_s=0.01)
    monitor.stop_judging()
    monitor.sample(1001.0, loop_delay_s=9.0)  # the drain reads the controller's whole database

    assert monitor.verdict(origin=1000.0)["behind"] is False
    assert monitor.series(origin=1000.0)["loop_delay_s"] == [0.01, 9.0], "the chart shows it all"


def test_a_paced_source_counts_the_readings_it_owes() -> None:
    async def scenario() -> tuple[float, float]:
        source = PacedSource(rate_hz=1000.0, seed=1)
        readings = source.readings()
        await anext(readings)
        started = source.started_at
        assert started is not None
        # Nobody pulled for half a second: about 500 readings are due and not made.
        owed = source.behind(started + 0.5)
        await readings.aclose()
        return owed, source.behind(started + 0.5)

    owed, after_close = asyncio.run(scenario())
    assert owed == 498.0
    assert after_close == 0.0, "a finished source owes nothing"
