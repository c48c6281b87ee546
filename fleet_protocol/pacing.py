"""How every edgefleet client paces itself on a shared link: retry backoff and a byte budget.

Both are part of how a daemon behaves on the wire (a thousand devices must not reconnect in
lockstep; a site must not exceed its uplink budget), so agent and gateway share this one
implementation instead of keeping copies that drift apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

#: Past this many doublings the ceiling is the cap anyway; stopping here keeps ``2**n`` small
#: (a float ``2.0**1024`` overflows, and a daemon offline for days reaches such attempt counts).
_MAX_DOUBLINGS = 62


@dataclass(slots=True)
class Backoff:
    """Exponential backoff with full jitter and a cap; `reset` after a success.

    Parameters
    ----------
    minimum, maximum
        Seconds: the first delay's ceiling and every delay's cap.
    attempt
        Failed attempts since the last `reset`; counts up without bound (it is reported).
    rng
        Source of jitter; seeded in tests.
    """

    minimum: float = 0.5
    maximum: float = 30.0
    attempt: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        if self.minimum < 0 or self.maximum < self.minimum:
            raise ValueError(f"backoff needs 0 <= minimum <= maximum, got {self.minimum}, {self.maximum}")

    def ceiling(self) -> float:
        """The largest delay the next attempt may draw."""
        return min(self.maximum, self.minimum * (1 << min(self.attempt, _MAX_DOUBLINGS)))

    def next_delay(self) -> float:
        """Seconds to wait before the next attempt; never raises, whatever the attempt count."""
        ceiling = self.ceiling()
        self.attempt += 1
        # Full jitter keeps a thousand devices from reconnecting in lockstep after an outage.
        return self.rng.uniform(self.minimum, max(self.minimum, ceiling))

    def reset(self) -> None:
        self.attempt = 0


class ByteBudget:
    """A token bucket in bytes: ``bytes_per_hour`` on average, bursts up to ``burst_bytes``.

    The sender waits rather than exceed the budget. A message larger than the burst is let
    through once the bucket is full, so one big batch can never block the link forever.

    Parameters
    ----------
    bytes_per_hour
        The long-run budget.
    burst_bytes
        The bucket's size; a minute's worth of budget (at least 4 KiB) when not given.
    clock
        Monotonic seconds; tests pass a fake one and tick it.
    """

    def __init__(
        self,
        bytes_per_hour: float,
        *,
        burst_bytes: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if bytes_per_hour <= 0:
            raise ValueError(f"a byte budget needs a positive rate, got {bytes_per_hour}")
        self.rate = bytes_per_hour / 3600.0
        self.capacity = float(burst_bytes if burst_bytes is not None else max(bytes_per_hour / 60.0, 4096.0))
        self._clock = clock
        self._tokens = self.capacity
        self._stamp = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def delay_for(self, size: int) -> float:
        """Seconds to wait before ``size`` bytes may go; 0 when they may go now."""
        self._refill()
        need = min(float(size), self.capacity)
        return 0.0 if self._tokens >= need else (need - self._tokens) / self.rate

    def spend(self, size: int) -> None:
        self._refill()
        self._tokens -= size

    async def take(self, size: int) -> None:
        """Wait until ``size`` bytes fit the budget, then spend them."""
        delay = self.delay_for(size)
        if delay > 0:
            # One sleep suffices: each budget has one sender, nobody else spends meanwhile.
            await asyncio.sleep(delay)
        self.spend(size)


async def wait_event(event: asyncio.Event, timeout_s: float) -> bool:
    """Wait for ``event`` at most ``timeout_s`` seconds; whether it is set.

    Not ``asyncio.wait_for``: on Python 3.11 a cancellation that arrives in the same loop
    iteration as the event is swallowed (wait_for returns the result instead; fixed in 3.12,
    python/cpython#86296), so a loop that waits this way in a cancelled task goes round again
    and never ends: it held agents' shutdown forever. ``asyncio.timeout`` does not lose it.
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await event.wait()
    return event.is_set()


T = TypeVar("T")


async def keep_cancellation(awaitable: Awaitable[T]) -> T:
    """Await ``awaitable``; if the task was cancelled meanwhile and it returned anyway, raise.

    For libraries that wait with ``asyncio.wait_for`` (aiomqtt, for every PUBACK, SUBACK and
    CONNACK): on Python 3.11 it returns the result of a future that completes in the same loop
    iteration as a cancellation and drops the cancellation (python/cpython#86296). A publish that
    returned that way left a cancelled task running: agents of a 2,000-device simulator whose state
    reporter published as it was cancelled never ended. The task's count of cancel requests
    (`asyncio.Task.cancelling`) still shows the lost one; an enclosing ``asyncio.timeout`` then
    turns it into its ``TimeoutError`` as usual.
    """
    before = cancel_requests()
    result = await awaitable
    raise_lost_cancellation(before)
    return result


def cancel_requests() -> int:
    """The current task's pending cancel requests (0 outside a task)."""
    task = asyncio.current_task()
    return task.cancelling() if task is not None else 0


def raise_lost_cancellation(before: int) -> None:
    """Raise `asyncio.CancelledError` if a cancel was requested since `cancel_requests` gave ``before``
    and was not delivered (see `keep_cancellation`: for a step that must clean up first)."""
    if cancel_requests() > before:
        raise asyncio.CancelledError
