"""A token bucket in bytes: the sender waits rather than exceed the uplink budget."""

from __future__ import annotations

import asyncio

from edge_agent.clock import Clock, SystemClock


class ByteBudget:
    """Allows ``bytes_per_hour`` on average, bursts up to ``burst_bytes``.

    A message larger than the burst is let through once the bucket is full, so one big
    batch can never block the link forever.
    """

    def __init__(
        self, bytes_per_hour: int, *, burst_bytes: int | None = None, clock: Clock | None = None
    ) -> None:
        self.rate = bytes_per_hour / 3600.0
        self.capacity = float(burst_bytes if burst_bytes is not None else max(bytes_per_hour // 60, 4096))
        self._clock = clock or SystemClock()
        self._tokens = self.capacity
        self._stamp = self._clock.monotonic()

    def _refill(self) -> None:
        now = self._clock.monotonic()
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
            # One sleep suffices: nobody else spends from this bucket meanwhile.
            await asyncio.sleep(delay)
        self.spend(size)
