"""Where readings come from: one interface, several sources."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Reading:
    """One sample from a sensor, before preprocessing."""

    ts: float
    values: Mapping[str, Any] | Sequence[Any]
    label: int | None = None
    #: Where the source is after this reading. Saved with the records in one
    #: transaction, so a restarted agent resumes after the last stored reading.
    cursor: str | None = None


class SensorSource(ABC):
    """An async stream of readings. ``start_cursor`` resumes where a previous run stopped."""

    @abstractmethod
    def readings(self, start_cursor: str | None = None) -> AsyncIterator[Reading]:
        """Yield readings until the source ends or the task is cancelled."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release what the source holds."""
