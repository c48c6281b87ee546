"""The runner's handle on the observer process (`simulators.observer`): start, ask, stop."""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
from pathlib import Path
from typing import Any

from simulators.fleet_view import FleetView
from simulators.scenario import SimError

#: A whole view of a large fleet is one line of a few megabytes.
_LINE_LIMIT = 1 << 28


class ObserverProcess:
    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.process: asyncio.subprocess.Process | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "simulators.observer",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                limit=_LINE_LIMIT,
            )
        self._reader = asyncio.create_task(self._read_answers(), name="observer-answers")

    async def watch(self, site: str, port: int) -> None:
        """Subscribe to a site's tree; returns once subscribed, so nothing after this is missed."""
        await self._ask({"op": "watch", "site": site, "port": port}, within_s=20)

    async def stats(self, within_s: float = 2.0) -> dict[str, Any] | None:
        """Records seen, devices online, model versions; None if the observer is too busy to say."""
        try:
            return await self._ask({"op": "stats"}, within_s=within_s)
        except TimeoutError:
            return None

    async def sync(self, within_s: float) -> bool:
        """True once the observer has read everything the brokers accepted before this call."""
        try:
            answer = await self._ask({"op": "sync", "timeout_s": within_s}, within_s=within_s + 10)
        except TimeoutError:
            return False
        return bool(answer.get("synced"))

    async def view(self) -> FleetView:
        answer = await self._ask({"op": "view"}, within_s=120)
        return await asyncio.to_thread(FleetView.from_wire, answer["view"])

    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def close(self) -> None:
        if self.process is None:
            return
        if self.process.stdin is not None and not self.process.stdin.is_closing():
            self.process.stdin.close()  # end of commands: the observer disconnects and exits
        try:
            await asyncio.wait_for(self.process.wait(), 15)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)

    async def _ask(self, command: dict[str, Any], within_s: float) -> dict[str, Any]:
        process = self.process
        if process is None or process.stdin is None or not self.alive():
            raise SimError(f"the observer process is not running: see {self.log_path}")
        ident = next(self._ids)
        answer = self._waiting[ident] = asyncio.get_running_loop().create_future()
        try:
            process.stdin.write(json.dumps({"id": ident, **command}).encode() + b"\n")
            await process.stdin.drain()
            # An answer that comes after the timeout is dropped by `_read_answers`.
            reply = await asyncio.wait_for(answer, within_s)
        finally:
            self._waiting.pop(ident, None)
        if "error" in reply:
            raise SimError(f"the observer could not {command['op']}: {reply['error']}")
        return reply

    async def _read_answers(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        try:
            while line := await self.process.stdout.readline():
                reply = json.loads(line)
                waiting = self._waiting.get(reply.pop("id", None))
                if waiting is not None and not waiting.done():
                    waiting.set_result(reply)
        finally:
            # The observer exited: whoever waits hears it now, not at their timeout.
            for waiting in self._waiting.values():
                if not waiting.done():
                    waiting.set_exception(SimError(f"the observer process exited: see {self.log_path}"))
