"""Time, injectable: tests tick a fake clock instead of sleeping."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float: ...  # wall clock, for timestamps
    def monotonic(self) -> float: ...  # for rates and intervals


class SystemClock:
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()
