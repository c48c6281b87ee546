"""The bounded buffer between the sensor source and inference, taken a micro-batch at a time.

An `asyncio.Queue` costs a few microseconds per item in put and get, as much as inferring a
reading on a small model; here the source appends and inference takes everything waiting
(up to a batch) in one call. When full, the source waits: readings are never dropped here.
"""

from __future__ import annotations

import asyncio
from collections import deque

from edge_agent.sources import Reading


class ReadingBuffer:
    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: deque[Reading] = deque()
        self._not_empty = asyncio.Event()
        self._not_full = asyncio.Event()
        self._not_full.set()
        self.closed = False

    def __len__(self) -> int:
        return len(self._items)

    async def put(self, reading: Reading) -> None:
        """Add a reading; waits while the buffer is full."""
        while len(self._items) >= self.maxsize:
            self._not_full.clear()
            await self._not_full.wait()
        self._items.append(reading)
        self._not_empty.set()

    def close(self) -> None:
        """No more readings will come: `take` returns what is left, then an empty list."""
        self.closed = True
        self._not_empty.set()

    async def take(self, limit: int) -> list[Reading]:
        """Up to ``limit`` readings, waiting for the first; an empty list once closed and drained."""
        items = self._items
        while not items:
            if self.closed:
                return []
            self._not_empty.clear()
            await self._not_empty.wait()
        count = min(limit, len(items))
        batch = [items.popleft() for _ in range(count)]
        self._not_full.set()
        return batch
