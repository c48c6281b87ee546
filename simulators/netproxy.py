"""A TCP proxy that fakes network faults: partitions, latency, loss, resets.

Put a FaultyLink between a site gateway and the cloud controller (HTTP), or between devices and
their broker (MQTT), point the client at ``link.port`` and degrade the link from the simulator or
a test. It is a userspace proxy on the caller's event loop so that it runs anywhere, unprivileged:
in CI containers, on developer laptops, hundreds of links in one simulator process. The alternative
on Linux with root is a network namespace pair with ``tc netem`` and iptables, which faults the real
kernel path (true packet loss, dropped SYNs); this proxy instead models what those faults do to a
TCP stream as the application sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import struct
from dataclasses import dataclass
from types import TracebackType
from typing import Self

log = logging.getLogger(__name__)

_CHUNK = 64 * 1024
# Bounded per direction: a slow link then stops reading from the sender, as a full TCP window would.
_QUEUE_CHUNKS = 64
# SO_LINGER on with a zero timeout: close() sends an RST instead of a FIN.
_LINGER_RST = struct.pack("ii", 1, 0)

_Chunks = asyncio.Queue[tuple[bytes, float] | None]


class _LinkReset(Exception):
    """The link chose to reset this connection (reset_rate)."""


def _reset(transport: asyncio.WriteTransport) -> None:
    """Abort with an RST: a partitioned peer must see an error, not a polite end of stream."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # The socket may be closed already; aborting is all that is left to do then.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    transport.abort()


@dataclass(eq=False)
class _Connection:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None

    def reset(self) -> None:
        """Reset both sides now."""
        for writer in (self.client, self.upstream):
            if writer is not None:
                _reset(writer.transport)

    def close(self) -> None:
        """Close both sides after what is buffered."""
        for writer in (self.client, self.upstream):
            if writer is not None:
                writer.close()


class FaultyLink:
    """Forward TCP from ``listen_host:port`` to the target, with faults the caller switches on.

    ``seed`` makes loss and resets reproducible; ``retransmit_delay`` is what one lost segment costs.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        seed: int | None = None,
        retransmit_delay: float = 0.2,
        connect_timeout: float = 5.0,
    ) -> None:
        self.target_host, self.target_port = target_host, target_port
        self.listen_host, self._listen_port = listen_host, listen_port
        self.retransmit_delay, self.connect_timeout = retransmit_delay, connect_timeout
        self._rng = random.Random(seed)
        self.latency = self.loss_rate = self.reset_rate = 0.0
        self.is_cut = False
        self.bytes_up = self.bytes_down = 0
        self.connections = self.refused = self.resets = 0
        self._server: asyncio.Server | None = None
        self._port = 0
        self._open: dict[_Connection, asyncio.Task[None]] = {}

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("FaultyLink has no port yet: await start() first")
        return self._port

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.listen_host, self._listen_port)
        self._port = int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Stop listening, reset every connection and wait for their tasks to end."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        tasks = list(self._open.values())
        self._reset_all()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def cut(self) -> None:
        """Partition: reset every open connection, and each new one until restore()."""
        self.is_cut = True
        self._reset_all()

    def restore(self) -> None:
        self.is_cut = False

    async def cut_for(self, seconds: float) -> None:
        self.cut()
        try:
            await asyncio.sleep(seconds)
        finally:
            # Restore even when cancelled: a cancelled fault must not leave the link down.
            self.restore()

    def set_latency(self, seconds: float) -> None:
        """Delay each chunk by ``seconds``, in each direction."""
        if seconds < 0:
            raise ValueError(f"latency must be >= 0 seconds, got {seconds}")
        self.latency = seconds

    def set_loss(self, rate: float, *, reset_rate: float = 0.0) -> None:
        """Per chunk: retransmission delay with probability ``rate``, connection reset with ``reset_rate``."""
        for name, value in (("rate", rate), ("reset_rate", reset_rate)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        self.loss_rate, self.reset_rate = rate, reset_rate

    def _reset_all(self) -> None:
        for conn, task in list(self._open.items()):
            conn.reset()
            task.cancel()

    def _accept(self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        """A plain callback, not a coroutine: the task is tracked before it can run, so close() sees it."""
        if self.is_cut or self._server is None:
            self.refused += 1
            _reset(client.transport)
            return
        self.connections += 1
        conn = _Connection(client)
        task = asyncio.get_running_loop().create_task(self._serve(conn, client_reader))
        self._open[conn] = task
        task.add_done_callback(lambda _: self._open.pop(conn, None))

    async def _serve(self, conn: _Connection, client_reader: asyncio.StreamReader) -> None:
        graceful = False
        try:
            try:
                async with asyncio.timeout(self.connect_timeout):
                    upstream_reader, conn.upstream = await asyncio.open_connection(
                        self.target_host, self.target_port
                    )
            except (OSError, TimeoutError) as exc:
                log.info(
                    "Target %s:%d is unreachable (%r). Resetting the client connection.",
                    self.target_host,
                    self.target_port,
                    exc,
                )
                return
            async with asyncio.TaskGroup() as pipes:
                for reader, writer, up in (
                    (client_reader, conn.upstream, True),
                    (upstream_reader, conn.client, False),
                ):
                    # Two tasks per direction: reading goes on while delivery waits out the latency.
                    queue: _Chunks = asyncio.Queue(_QUEUE_CHUNKS)
                    pipes.create_task(self._receive(reader, queue))
                    pipes.create_task(self._deliver(queue, writer, up=up))
            graceful = True
        except* _LinkReset:
            self.resets += 1
        except* OSError as group:
            log.debug("A connection through the link failed (%r). Resetting both sides.", group.exceptions[0])
        finally:
            # Cancelled (cut, close) or failed: reset, as the network would; both sides at EOF: close.
            if graceful:
                conn.close()
            else:
                conn.reset()

    async def _receive(self, reader: asyncio.StreamReader, queue: _Chunks) -> None:
        """Stamp each chunk with the time the faulty link lets it arrive; None marks the end of stream."""
        loop = asyncio.get_running_loop()
        while chunk := await reader.read(_CHUNK):
            if self.reset_rate and self._rng.random() < self.reset_rate:
                raise _LinkReset
            delay = self.latency
            if self.loss_rate and self._rng.random() < self.loss_rate:
                # TCP cannot drop bytes: a lost segment reaches the application once it is retransmitted.
                delay += self.retransmit_delay
            await queue.put((chunk, loop.time() + delay))
        await queue.put(None)

    async def _deliver(self, queue: _Chunks, writer: asyncio.StreamWriter, *, up: bool) -> None:
        """Write chunks in order, each no earlier than its due time: a late one holds the rest back."""
        loop = asyncio.get_running_loop()
        while (item := await queue.get()) is not None:
            chunk, due = item
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            writer.write(chunk)
            if up:
                self.bytes_up += len(chunk)
            else:
                self.bytes_down += len(chunk)
            await writer.drain()
        # Pass the half-close on: a peer that shut its sending side still reads the replies.
        if writer.can_write_eof():
            writer.write_eof()
