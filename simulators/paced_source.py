"""A synthetic sensor that knows how far behind its schedule it is.

`SyntheticSource` catches up when it is late: a reading due at t comes when the agent
pulls it, so a simulator short of CPU makes fewer readings than the scenario asked for,
silently. This one counts what it gave against what was due since it started.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from edge_agent.sources.base import Reading
from edge_agent.sources.synthetic import SyntheticSource


class PacedSource(SyntheticSource):
    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.started_at: float | None = None
        self.given = 0
        self.done = False

    async def readings(self, start_cursor: str | None = None) -> AsyncIterator[Reading]:
        self.started_at, self.given, self.done = time.monotonic(), 0, False
        try:
            async for reading in super().readings(start_cursor):
                self.given += 1
                yield reading
        finally:
            self.done = True

    def behind(self, now: float) -> float:
        """Readings due by ``now`` and not given yet (the next one counts as due when its time comes)."""
        if self.started_at is None or self.done or not self.rate_hz:
            return 0.0
        return max(0.0, (now - self.started_at) * self.rate_hz - self.given - 1)
