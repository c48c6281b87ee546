"""The child side of the simulator's helper processes: JSON-line commands on stdin, answers on stdout.

Each command is one JSON object a line with an ``id``; each answer is a line with the same
``id``. Commands run concurrently, so a slow one (a sync, a clean stop of many agents) does not
hold up a quick one (a status). End of stdin or SIGTERM ends the loop; SIGINT is the parent's to
handle (Ctrl-C reaches the whole process group, and the parent stops its children in order).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

Answer = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]

#: A whole view of a large fleet, or the status of a thousand agents, is one long line.
LINE_LIMIT = 1 << 28


async def serve(answer: Answer) -> None:
    """Answer commands until stdin ends; then cancel what is still running."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, sys.stdout)
    writer = asyncio.StreamWriter(transport, protocol, None, loop)
    loop.add_signal_handler(signal.SIGTERM, reader.feed_eof)
    pending: set[asyncio.Task[None]] = set()

    async def handle(command: dict[str, Any]) -> None:
        try:
            reply = await answer(command)
        except Exception as exc:  # an answer that fails is reported to the parent, which decides
            log.exception("%s failed", command.get("op"))
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        writer.write(json.dumps({"id": command.get("id"), **reply}).encode() + b"\n")
        await writer.drain()

    while line := await reader.readline():
        task = asyncio.create_task(handle(json.loads(line)))
        pending.add(task)
        task.add_done_callback(pending.discard)
    for task in list(pending):
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


def run_child(main: Callable[[], Awaitable[None]]) -> None:
    """The entry point of a helper process: warnings to stderr (the parent's log file), SIGINT ignored."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    asyncio.run(main())
