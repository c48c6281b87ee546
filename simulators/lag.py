"""How late the simulator itself runs: event-loop delay, timeline lateness, readings behind schedule.

Hundreds of agents share one loop in each agent process. When the machine cannot carry them,
their loops stall (each process measures its own, `simulators.agent_host`), events fire late and
sensors make fewer readings than declared: the run is no longer the scenario, and its verdict
must say so instead of passing or failing it. `LagMonitor` measures while the fleet streams and
`LagMonitor.verdict` tells whether any measure crossed the scenario's ``lag_limit_s``, when,
with how many devices running, and about how many this machine held on schedule.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_TICK_S = 0.1
_SAMPLE_S = 1.0


@dataclass(frozen=True, slots=True)
class FleetPace:
    """What the fleet's sensors say at one moment."""

    devices: int  # running agents
    due_per_s: float  # readings per second the running sensors are declared to make
    behind: float  # readings due and not made yet, summed over running sensors
    given: int  # readings made so far by the running sensors


@dataclass(slots=True)
class LagSample:
    t: float  # monotonic
    loop_delay_s: float  # worst wake-up delay of a 0.1 s sleep during the last second
    behind_s: float  # readings behind schedule, as seconds of the fleet's declared rate
    devices: int
    given: int
    behind: float
    judged: bool  # taken while the fleet streamed on its schedule


@dataclass
class LagMonitor:
    limit_s: float
    pace: Callable[[], FleetPace]
    samples: list[LagSample] = field(default_factory=list)
    delays: list[float] = field(default_factory=list)
    #: (kind, declared at_s, seconds late, monotonic time it fired)
    events: list[tuple[str, float, float, float]] = field(default_factory=list)
    #: True while the fleet streams on its schedule: from its start until it stops producing.
    judging: bool = False
    #: Set by the runner when the observer could not read all the brokers had accepted in time.
    observer_incomplete: str | None = None
    #: The worst delay of the agent processes' loops since the last call (they run the devices).
    host_delay: Callable[[], float] | None = None

    async def run(self) -> None:
        """Sample until cancelled: a 0.1 s sleep that wakes late means the loop had no time for it."""
        worst, last_sample = 0.0, time.monotonic()
        while True:
            before = time.monotonic()
            await asyncio.sleep(_TICK_S)
            now = time.monotonic()
            delay = max(0.0, now - before - _TICK_S)
            worst = max(worst, delay)
            if self.judging:
                self.delays.append(delay)
            if now - last_sample >= _SAMPLE_S:
                if self.host_delay is not None:
                    hosts = self.host_delay()
                    worst = max(worst, hosts)
                    if self.judging:
                        self.delays.append(hosts)
                self.sample(now, worst)
                worst, last_sample = 0.0, now

    def sample(self, now: float, loop_delay_s: float) -> None:
        pace = self.pace()
        behind_s = pace.behind / pace.due_per_s if pace.due_per_s else 0.0
        self.samples.append(
            LagSample(now, loop_delay_s, behind_s, pace.devices, pace.given, pace.behind, self.judging)
        )

    def event_fired(self, kind: str, at_s: float, elapsed: float, now: float | None = None) -> None:
        """An event due at ``at_s`` on the scenario's clock fired at ``elapsed``."""
        fired = time.monotonic() if now is None else now
        self.events.append((kind, at_s, max(0.0, elapsed - at_s), fired))

    def start_judging(self) -> None:
        """The fleet streams: the scenario's clock starts."""
        self.judging = True

    def stop_judging(self) -> None:
        """The fleet stopped producing: no schedule to keep from here on (the drain has none)."""
        self.judging = False

    def verdict(self, origin: float) -> dict[str, Any]:
        """The report's ``simulator`` section; times are seconds after ``origin`` (streaming start)."""
        judged = [s for s in self.samples if s.judged]
        delays = sorted(self.delays)
        report: dict[str, Any] = {
            "behind": False,
            "lag_limit_s": self.limit_s,
            "loop_delay_max_s": round(delays[-1], 3) if delays else 0.0,
            "loop_delay_p95_s": round(delays[int(0.95 * (len(delays) - 1))], 3) if delays else 0.0,
            "event_lateness_max_s": round(max((late for _, _, late, _ in self.events), default=0.0), 2),
            "readings_behind_max_s": round(max((s.behind_s for s in judged), default=0.0), 2),
            "readings_behind_at_end": int(judged[-1].behind) if judged else 0,
            "devices_max": max((s.devices for s in judged), default=0),
            "observer_incomplete": self.observer_incomplete,
            "message": None,
        }
        first = self._first_crossing(judged)
        reasons = self._reasons(report, judged)
        if not reasons:
            return report
        report["behind"] = True
        where = ""
        if first is not None:
            report["fell_behind_at_s"] = round(first - origin, 1)
            report["fell_behind_with_devices"] = running = self._devices_at(first)
            where = f" from {first - origin:.0f} s on, with {running} devices running"
        held, basis = self._largest_held(judged, report)
        report["largest_fleet_held"], report["largest_fleet_held_basis"] = held, basis
        report["message"] = (
            f"the simulator fell behind{where} (limit {self.limit_s:g} s): {'; '.join(reasons)}."
            f" {_capacity(held, basis, report.get('fell_behind_with_devices'))}"
            " Verdicts that need a timely, complete view are not judged; rerun with fewer devices."
        )
        return report

    def _largest_held(self, judged: list[LagSample], report: dict[str, Any]) -> tuple[int | None, str]:
        """The most devices that ran within the limit, and how that is known; None if no count did.

        Timing: agents load their models one after another, so the start is a ramp; the last
        count before the loop or an event first went past the limit held. Throughput: sensors
        making a share of their readings keep that share of the fleet busy. The smaller wins.
        """
        estimates: list[tuple[int | None, str]] = []
        timing = [s.t for s in self.samples if s.loop_delay_s > self.limit_s]
        timing += [fired for _, _, late, fired in self.events if late > self.limit_s]
        if timing:
            crossed = min(timing)
            before = [s.devices for s in self.samples if s.t < crossed]
            held = max(before, default=0)
            if 0 < held < self._devices_at(crossed):
                estimates.append((held, "the most devices running before the loop or an event was late"))
            else:
                estimates.append((None, "the loop or an event was late with every device running"))
        if report["readings_behind_max_s"] > self.limit_s and judged:
            last = judged[-1]
            due = last.given + last.behind
            share = last.given / due if due else 1.0
            estimates.append((int(last.devices * share), f"sensors made {share:.0%} of the readings due"))
        return min(estimates, key=lambda e: -1 if e[0] is None else e[0], default=(None, ""))

    def _first_crossing(self, judged: list[LagSample]) -> float | None:
        """When the loop, the sensors or an event first went past the limit (monotonic time)."""
        times = [s.t for s in judged if s.loop_delay_s > self.limit_s or s.behind_s > self.limit_s]
        times += [fired for _, _, late, fired in self.events if late > self.limit_s]
        return min(times, default=None)

    def _reasons(self, report: dict[str, Any], judged: list[LagSample]) -> list[str]:
        reasons = []
        worst_delay = max((s.loop_delay_s for s in judged), default=0.0)
        if worst_delay > self.limit_s:
            reasons.append(f"the event loop stalled up to {worst_delay:.1f} s")
        if report["readings_behind_max_s"] > self.limit_s:
            reasons.append(f"sensors fell {report['readings_behind_max_s']:.1f} s behind their schedule")
        late = [(kind, at_s, late) for kind, at_s, late, _ in self.events if late > self.limit_s]
        if late:
            kind, at_s, worst = max(late, key=lambda e: e[2])
            reasons.append(f"{len(late)} event(s) fired late, {kind} at {at_s:.0f} s by {worst:.1f} s")
        if self.observer_incomplete:
            reasons.append(self.observer_incomplete)
        return reasons

    def _devices_at(self, t: float) -> int:
        """Devices running at the last sample up to ``t``."""
        before = [s.devices for s in self.samples if s.t <= t]
        return before[-1] if before else (self.samples[0].devices if self.samples else 0)

    def series(self, origin: float) -> dict[str, list[float]]:
        """Per-second samples for the report's chart."""
        return {
            "t": [round(s.t - origin, 2) for s in self.samples],
            "loop_delay_s": [round(s.loop_delay_s, 3) for s in self.samples],
            "readings_behind_s": [round(s.behind_s, 2) for s in self.samples],
            "devices": [s.devices for s in self.samples],
        }


def _capacity(held: int | None, basis: str, running: int | None) -> str:
    if held is None:
        return f"This machine did not hold {running} devices on its schedule ({basis})." if running else ""
    return f"This machine held about {held} device{'' if held == 1 else 's'} on schedule ({basis})."
