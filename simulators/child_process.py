"""The parent's handle on a helper process that speaks JSON lines (`simulators.json_lines`).

Start it, ask it things (each answer matched to its question by id), kill it -9, close it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from simulators.json_lines import LINE_LIMIT
from simulators.scenario import SimError

T = TypeVar("T")


class JsonLineChild:
    def __init__(self, module: str, log_path: Path, *, env: Mapping[str, str] | None = None) -> None:
        self.module, self.log_path = module, log_path
        self.env = dict(env) if env is not None else None
        self.process: asyncio.subprocess.Process | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                self.module,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                limit=LINE_LIMIT,
                env=self.env,
            )
        self._reader = asyncio.create_task(self._read_answers(), name=f"{self.module}-answers")

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def returncode(self) -> int | None:
        return self.process.returncode if self.process is not None else None

    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def ask(self, command: dict[str, Any], within_s: float) -> dict[str, Any]:
        """The answer to ``command``; TimeoutError after ``within_s``, SimError if the child is gone."""
        process = self.process
        if process is None or process.stdin is None or not self.alive():
            raise SimError(f"{self.module} is not running: see {self.log_path}")
        ident = next(self._ids)
        answer = self._waiting[ident] = asyncio.get_running_loop().create_future()
        try:
            try:
                process.stdin.write(json.dumps({"id": ident, **command}).encode() + b"\n")
                await process.stdin.drain()
            except (BrokenPipeError, ConnectionResetError):
                raise SimError(f"{self.module} exited: see {self.log_path}") from None
            # An answer that comes after the timeout is dropped by `_read_answers`.
            async with asyncio.timeout(within_s):
                reply = await answer
        finally:
            self._waiting.pop(ident, None)
        if "error" in reply:
            raise SimError(f"{self.module} could not {command['op']}: {reply['error']}")
        return reply

    async def wait(self, within_s: float) -> int | None:
        """The exit code once the child has exited, None if it still runs after ``within_s``."""
        if self.process is None:
            return None
        try:
            async with asyncio.timeout(within_s):
                return await self.process.wait()
        except TimeoutError:
            return None

    async def kill(self) -> None:
        """kill -9: nothing flushed, nothing said goodbye."""
        if self.process is not None and self.process.returncode is None:
            os.kill(self.process.pid, signal.SIGKILL)
            await self.process.wait()
        await self._stop_reader()

    async def close(self, within_s: float = 15.0) -> None:
        """End of commands: the child finishes and exits; killed if it does not within ``within_s``."""
        if self.process is None:
            return
        if self.process.stdin is not None and not self.process.stdin.is_closing():
            self.process.stdin.close()
        try:
            async with asyncio.timeout(within_s):
                await self.process.wait()
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
        await self._stop_reader()

    async def _stop_reader(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
            self._reader = None

    async def _read_answers(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        try:
            while line := await self.process.stdout.readline():
                reply = json.loads(line)
                waiting = self._waiting.get(reply.pop("id", None))
                if waiting is not None and not waiting.done():
                    waiting.set_result(reply)
        finally:
            # The child exited: whoever waits hears it now, not at their timeout.
            for waiting in self._waiting.values():
                if not waiting.done():
                    waiting.set_exception(SimError(f"{self.module} exited: see {self.log_path}"))


async def start_to_the_end(start: Callable[..., T], *args: Any) -> T:
    """``asyncio.to_thread(start, *args)``, but a cancellation is raised only once the thread has ended.

    For starting child processes: a thread goes on after its caller is cancelled, and a process it
    spawned after the caller's cleanup looked (Ctrl-C while a site was coming up) outlived the run.
    Waiting is bounded by the start's own timeouts; a second cancellation does not cut it short.
    """
    started = asyncio.ensure_future(asyncio.to_thread(start, *args))
    try:
        return await asyncio.shield(started)
    except asyncio.CancelledError:
        while not started.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait({started})
        if not started.cancelled():
            started.exception()  # retrieved: the cancellation is what the caller hears
        raise
