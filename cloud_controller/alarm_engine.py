"""The alarm evaluator: a background task that judges every model's alarm policy periodically.

Everything it decides lives in the database (alarms, their audit records), so a restarted
controller goes on where it was: an alarm open before the restart stays open, and is resolved
by the first pass that sees its condition clear. Several controllers on one PostgreSQL database
may run it at once: the one-open-alarm index lets only one of them fire an alarm.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from sqlalchemy.engine import Engine
from sqlmodel import Session

from cloud_controller.accuracy import Tally
from cloud_controller.alarms import Outcome, apply, readings
from fleet_protocol.pacing import wait_event

log = logging.getLogger(__name__)


class AlarmEngine:
    """Evaluates every ``interval_s`` in a worker thread (the database calls block).

    ``on_accuracy`` receives each pass's tallies (what /metrics exports as the latest accuracy).
    ``after_pass`` is called in the event loop after each pass, failed or not (the alarm webhook's
    notifier is woken by it: it sends in a task of its own, so a slow receiver delays no evaluation).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        interval_s: float,
        on_accuracy: Callable[[list[Tally]], None] = lambda _: None,
        clock: Callable[[], float] = time.time,
        after_pass: Callable[[], None] = lambda: None,
    ) -> None:
        self.engine, self.interval_s, self.on_accuracy, self.clock = engine, interval_s, on_accuracy, clock
        self.after_pass = after_pass

    async def run(self, stop: asyncio.Event) -> None:
        """Evaluate until ``stop`` is set; a pass under way finishes first."""
        while not stop.is_set():
            try:
                await asyncio.to_thread(self.evaluate)
            except Exception:  # the database may be away for a while: the next pass tries again
                log.exception("alarm evaluation failed; trying again in %g s", self.interval_s)
            self.after_pass()
            await wait_event(stop, self.interval_s)

    def evaluate(self) -> Outcome:
        now = self.clock()
        with Session(self.engine) as session:
            found, counted, rules = readings(session, now)
            self.on_accuracy(counted)
            outcome = apply(session=session, found=found, rules=rules, now=now)
            # Within the session: the rows reload what the commit expired.
            for alarm in outcome.fired:
                log.warning(
                    "alarm %s fired: %s of %s at %s is %.3f against %.3f (%d samples)",
                    alarm.id,
                    alarm.kind,
                    alarm.model_id,
                    alarm.site_id,
                    alarm.value,
                    alarm.threshold,
                    alarm.samples,
                )
            for alarm in outcome.resolved:
                log.info(
                    "alarm %s resolved: %s of %s at %s", alarm.id, alarm.kind, alarm.model_id, alarm.site_id
                )
        return outcome
