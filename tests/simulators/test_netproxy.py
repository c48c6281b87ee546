"""FaultyLink over real sockets: an echo server and an aiohttp app behind it, faults from the test."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from simulators.netproxy import FaultyLink

# Only bounds how long a broken test hangs; no test asserts how fast the link is.
HANG = 5.0


class EchoServer:
    """Echoes every byte; tracks its handler tasks so a test can tell them from the link's."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[None]] = set()
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self._server.wait_closed()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._echo(reader, writer))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


@pytest.fixture
async def echo() -> AsyncIterator[EchoServer]:
    server = EchoServer()
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def link(echo: EchoServer) -> AsyncIterator[FaultyLink]:
    async with FaultyLink("127.0.0.1", echo.port, seed=0) as faulty:
        yield faulty


async def connect(link: FaultyLink) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", link.port)


async def round_trip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes) -> bytes:
    writer.write(payload)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(payload)), HANG)


async def exchange(link: FaultyLink, payload: bytes) -> bytes:
    """One connection, one round trip, closed."""
    reader, writer = await connect(link)
    try:
        return await round_trip(reader, writer, payload)
    finally:
        writer.close()


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_bytes_round_trip_and_are_counted(link: FaultyLink) -> None:
    payload = bytes(range(256)) * 800  # 204,800 bytes: several chunks each way

    echoed = await exchange(link, payload)

    assert echoed == payload
    assert (link.bytes_up, link.bytes_down) == (len(payload), len(payload))
    assert (link.connections, link.refused) == (1, 0)


async def test_cut_resets_an_open_connection(link: FaultyLink) -> None:
    reader, writer = await connect(link)
    assert await round_trip(reader, writer, b"before") == b"before"

    link.cut()

    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(1), HANG)
    writer.close()


async def test_cut_resets_new_connections_until_restore(link: FaultyLink) -> None:
    link.cut()

    with pytest.raises(ConnectionError):
        await exchange(link, b"while cut")
    assert (link.connections, link.refused) == (0, 1)

    link.restore()

    assert await exchange(link, b"after restore") == b"after restore"
    assert (link.connections, link.refused) == (1, 1)


async def test_cut_for_restores_even_when_cancelled(link: FaultyLink) -> None:
    cutting = asyncio.create_task(link.cut_for(3600))
    await asyncio.sleep(0)
    assert link.is_cut

    cutting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cutting

    assert not link.is_cut
    assert await exchange(link, b"up again") == b"up again"


async def test_latency_delays_each_direction_and_keeps_order(link: FaultyLink) -> None:
    link.set_latency(0.2)
    reader, writer = await connect(link)
    loop = asyncio.get_running_loop()
    started = loop.time()

    pieces = [f"piece {i};".encode() for i in range(20)]
    for piece in pieces:
        writer.write(piece)
        await writer.drain()
        await asyncio.sleep(0)  # separate reads at the link, hence separate delayed chunks
    echoed = await asyncio.wait_for(reader.readexactly(len(b"".join(pieces))), HANG)
    elapsed = loop.time() - started
    writer.close()

    assert echoed == b"".join(pieces)
    # 0.2 s up and 0.2 s down; asyncio may fire a timer one clock tick early.
    assert elapsed >= 0.4 - 0.01


async def test_loss_adds_a_retransmission_delay(echo: EchoServer) -> None:
    async with FaultyLink("127.0.0.1", echo.port, seed=1, retransmit_delay=0.2) as link:
        link.set_loss(1.0)
        loop = asyncio.get_running_loop()
        started = loop.time()

        echoed = await exchange(link, b"lossy")

        assert echoed == b"lossy"
        assert loop.time() - started >= 0.4 - 0.01


async def test_reset_rate_resets_the_connection(link: FaultyLink) -> None:
    link.set_loss(0.0, reset_rate=1.0)

    with pytest.raises(ConnectionResetError):
        await exchange(link, b"doomed")
    assert link.resets == 1
    assert link.bytes_up == 0


@pytest.mark.parametrize(("rate", "reset_rate", "message"), [(1.5, 0.0, "rate"), (0.1, -0.1, "reset_rate")])
async def test_set_loss_rejects_rates_outside_0_1(
    link: FaultyLink, rate: float, reset_rate: float, message: str
) -> None:
    with pytest.raises(ValueError, match=f"^{message} must be between 0 and 1"):
        link.set_loss(rate, reset_rate=reset_rate)


async def test_set_latency_rejects_negative_seconds(link: FaultyLink) -> None:
    with pytest.raises(ValueError, match="latency must be >= 0 seconds, got -1"):
        link.set_latency(-1)


async def test_port_before_start_is_refused() -> None:
    with pytest.raises(RuntimeError, match="await start\\(\\) first"):
        _ = FaultyLink("127.0.0.1", 1).port


async def test_target_down_resets_the_client_connection() -> None:
    async with FaultyLink("127.0.0.1", unused_port()) as link:
        reader, writer = await connect(link)

        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(1), HANG)
        writer.close()

        assert (link.connections, link.bytes_up) == (1, 0)


async def test_close_resets_connections_and_leaves_no_task(echo: EchoServer) -> None:
    before = asyncio.all_tasks()
    link = FaultyLink("127.0.0.1", echo.port)
    await link.start()
    link.set_latency(0.05)  # leaves delivery tasks sleeping when close() comes
    clients = [await connect(link) for _ in range(3)]
    for reader, writer in clients:
        assert await round_trip(reader, writer, b"hello") == b"hello"
        writer.write(b"in flight")

    await link.close()

    assert asyncio.all_tasks() - before - echo.tasks == set()
    for reader, writer in clients:
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(), HANG)
        writer.close()


async def ping(request: web.Request) -> web.Response:
    return web.Response(text="pong")


@pytest.fixture
async def http_port() -> AsyncIterator[int]:
    app = web.Application()
    app.router.add_get("/ping", ping)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield int(runner.addresses[0][1])
    await runner.cleanup()


async def test_http_request_fails_while_cut_and_succeeds_after_restore(http_port: int) -> None:
    timeout = aiohttp.ClientTimeout(total=HANG)
    async with (
        FaultyLink("127.0.0.1", http_port) as link,
        aiohttp.ClientSession(f"http://127.0.0.1:{link.port}", timeout=timeout) as session,
    ):
        async with session.get("/ping") as response:
            assert await response.text() == "pong"

        link.cut()
        with pytest.raises(aiohttp.ClientConnectionError):
            async with session.get("/ping") as response:
                await response.text()

        link.restore()
        async with session.get("/ping") as response:
            assert response.status == 200
            assert await response.text() == "pong"
