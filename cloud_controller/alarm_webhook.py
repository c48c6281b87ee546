"""Alarm webhook: POST each alarm's firing and resolution to one URL, at least once.

Whether each event was delivered lives in the alarm's row (``fired_notice``, ``resolved_notice``:
NULL until then, ``delivered`` or ``skipped``), so a restarted controller sends what it had not; an
event is marked only after the receiver answered 2xx, and a controller killed between the answer
and the mark sends it again. Several controllers on one database may each send an event: receivers
deduplicate by the payload's ``id`` (``"<alarm id>:alarm.<event>"``).

Each pass sends in alarm order, firing before resolution, and stops at the first failure (the
receiver is likely down or refusing: one timeout a pass, not one per event); the next pass tries
again from there. An event older than ``max_age_s`` (by its own time, ``fired_at`` or
``resolved_at``) when a pass finds it undelivered is given up: marked ``skipped``, counted and
logged. That is what a webhook configured on a controller with a history sends (the last day's
events by default, not years of alarms), and how long a receiver may be away before events are
dropped. The alarms themselves stay in the API, on the dashboard and in the audit log.

Stdlib HTTP only (``urllib``): the cloud install has no httpx, and urllib logs no request lines
(the URL itself may be a secret, as a chat service's webhook URL is). The token and the URL's
path never reach the log; a failure logs the receiver's host, status and the start of its answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter
from sqlalchemy import or_, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from cloud_controller.alarms import public
from cloud_controller.label_models import Alarm

log = logging.getLogger(__name__)

DELIVERED, SKIPPED = "delivered", "skipped"
EVENTS = ("fired", "resolved")
RESULTS = ("ok", "failed", "skipped")
#: How much of a receiver's refusal the log shows.
BODY_SHOWN = 200


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer that is not 2xx: a failure (and the token goes nowhere else)."""

    def redirect_request(self, *_: Any, **__: Any) -> None:
        return None


class AlarmNotifier:
    """Sends undelivered alarm events; ``deliver`` blocks, ``run`` calls it in a worker thread."""

    def __init__(
        self,
        engine: Engine,
        *,
        url: str,
        token: str | None,
        timeout_s: float,
        max_age_s: float | None,
        counter: Counter | None = None,
        clock: Callable[[], float] = time.time,
        limit: int = 500,
    ) -> None:
        self.engine, self.url, self.timeout_s, self.max_age_s = engine, url, timeout_s, max_age_s
        self.counter, self.clock, self.limit = counter, clock, limit
        parts = urllib.parse.urlsplit(url)
        #: What the log names: the receiver's scheme and host, not its path or query.
        self.where = f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        self._headers = {"Content-Type": "application/json", "User-Agent": "edgefleet-controller"}
        if token is not None:
            self._headers["Authorization"] = f"Bearer {token}"
        self._opener = urllib.request.build_opener(_NoRedirects)
        #: Events whose failure was logged: once each while it fails, not every pass.
        self._failing: set[str] = set()
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Send now (the evaluator calls it after each pass, in the event loop)."""
        self._wake.set()

    async def run(self, stop: asyncio.Event, interval_s: float) -> None:
        """Deliver when woken, and at least every ``interval_s``, until ``stop`` is set."""
        age = "no age limit" if self.max_age_s is None else f"events older than {self.max_age_s:g} s skipped"
        log.info("alarm webhook: notifying %s (%s)", self.where, age)
        while not stop.is_set():
            self._wake.clear()
            try:
                await asyncio.to_thread(self.deliver, stop.is_set)
            except Exception:  # the database may be away: undelivered events stay so
                log.exception("alarm webhook: a pass failed; trying again in %g s", interval_s)
            woken = asyncio.ensure_future(self._wake.wait())
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait({woken, stopped}, timeout=interval_s, return_when=asyncio.FIRST_COMPLETED)
            woken.cancel()
            stopped.cancel()

    def deliver(self, stopping: Callable[[], bool] = lambda: False) -> int:
        """Send what is undelivered, oldest alarm first, firing before resolution; the number sent."""
        with Session(self.engine) as session:
            pending = session.exec(
                select(Alarm)
                .where(
                    or_(
                        col(Alarm.fired_notice).is_(None),
                        col(Alarm.resolved_at).is_not(None) & col(Alarm.resolved_notice).is_(None),
                    )
                )
                .order_by(col(Alarm.id))
                .limit(self.limit)
            ).all()
            session.expunge_all()
        sent, skipped = 0, []
        try:
            for alarm in pending:
                for event in EVENTS:
                    at = alarm.fired_at if event == "fired" else alarm.resolved_at
                    if at is None or getattr(alarm, f"{event}_notice") is not None:
                        continue
                    key = f"{alarm.id}:alarm.{event}"
                    if self.max_age_s is not None and self.clock() - at > self.max_age_s:
                        self._mark(alarm, event, SKIPPED)
                        self._count(event, "skipped")
                        self._failing.discard(key)
                        skipped.append(key)
                        continue
                    if stopping() or not self._send(alarm, event, key):
                        return sent  # the receiver is likely down: the next pass goes on from here
                    self._mark(alarm, event, DELIVERED)
                    sent += 1
        finally:
            if skipped:
                log.warning(
                    "alarm webhook: %d events older than %g s skipped, not sent: %s",
                    len(skipped),
                    self.max_age_s,
                    ", ".join(skipped[:20]) + (", ..." if len(skipped) > 20 else ""),
                )
        return sent

    def _send(self, alarm: Alarm, event: str, key: str) -> bool:
        body = {"event": f"alarm.{event}", "id": key, "alarm": public(alarm).model_dump(mode="json")}
        request = urllib.request.Request(
            self.url, data=json.dumps(body).encode(), headers=self._headers, method="POST"
        )
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                response.read(64 * 1024)
                status = response.status
        except urllib.error.HTTPError as exc:  # any answer that is not 2xx (3xx too: no redirects)
            try:
                answer = exc.read(BODY_SHOWN + 1).decode(errors="replace")
            except OSError:  # the receiver hung up mid-answer
                answer = ""
            finally:
                exc.close()
            shown = answer[:BODY_SHOWN] + ("..." if len(answer) > BODY_SHOWN else "")
            reason = f"answered {exc.code}: {shown!r}"
        except (urllib.error.URLError, OSError, ValueError) as exc:  # refused, timed out, TLS, ...
            cause = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            reason = f"unreachable: {type(cause).__name__}: {cause}"[:BODY_SHOWN]
        else:
            if 200 <= status < 300:
                self._count(event, "ok")
                if key in self._failing:
                    self._failing.discard(key)
                    log.info("alarm webhook: %s delivered to %s after failures", key, self.where)
                return True
            reason = f"answered {status}"  # 1xx: urllib reads no further
        self._count(event, "failed")
        if key not in self._failing:
            self._failing.add(key)
            log.warning(
                "alarm webhook: %s not delivered: %s %s; trying again each pass (logged once)",
                key,
                self.where,
                reason,
            )
        return False

    def _count(self, event: str, result: str) -> None:
        if self.counter is not None:
            self.counter.labels(event=event, result=result).inc()

    def _mark(self, alarm: Alarm, event: str, notice: str) -> None:
        column = Alarm.fired_notice if event == "fired" else Alarm.resolved_notice
        with Session(self.engine) as session:
            session.exec(  # type: ignore[call-overload]
                update(Alarm).where(col(Alarm.id) == alarm.id, col(column).is_(None)).values({column: notice})
            )
            session.commit()
        setattr(alarm, f"{event}_notice", notice)
