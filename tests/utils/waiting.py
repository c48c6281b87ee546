"""Polling for a condition with a deadline: for outcomes that cross a process or a broker."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def wait_until(predicate: Callable[[], bool], within: float = 60.0, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        if loop.time() > deadline:
            raise TimeoutError(f"{what} not met within {within}s")
        await asyncio.sleep(0.05)
