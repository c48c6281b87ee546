"""The agent's one MQTT adapter: aiomqtt (paho-mqtt on the asyncio loop, no thread per client).

Nothing else in edge_agent imports aiomqtt or paho; a simulator runs thousands of links
on one loop. Reconnection lives outside the client, in the caller's loop, with
`fleet_protocol.pacing.Backoff`.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiomqtt

from edge_agent.exceptions import LinkError
from fleet_protocol.pacing import cancel_requests, keep_cancellation, raise_lost_cancellation

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LastWill:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(slots=True)
class LinkSettings:
    host: str
    port: int
    client_id: str
    username: str | None = None
    password: str | None = None
    keepalive_s: int = 30
    will: LastWill | None = None
    #: A persistent session: the broker keeps our subscriptions and queued QoS 1
    #: messages while we are away.
    clean_session: bool = False
    timeout_s: float = 10.0
    max_inflight: int = 20
    #: MQTT over TLS (a client certificate in it); None: plain TCP.
    tls: ssl.SSLContext | None = None


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes
    retain: bool


class MqttLink:
    """One MQTT connection; ``async with link:`` connects, and can be entered again after a drop."""

    def __init__(self, settings: LinkSettings) -> None:
        self.settings = settings
        will = None
        if settings.will is not None:
            w = settings.will
            will = aiomqtt.Will(w.topic, w.payload, qos=w.qos, retain=w.retain)
        self._client = aiomqtt.Client(
            settings.host,
            settings.port,
            identifier=settings.client_id,
            username=settings.username,
            password=settings.password,
            keepalive=settings.keepalive_s,
            will=will,
            clean_session=settings.clean_session,
            timeout=settings.timeout_s,
            max_inflight_messages=settings.max_inflight,
            tls_context=settings.tls,
        )
        # aiomqtt hands paho's "register write" to the loop with the socket's number taken now; a
        # connection that drops meanwhile makes add_writer fail on a closed (or reused) descriptor
        # and asyncio print the error. This does the same, checking the socket when it runs.
        self._client._client.on_socket_register_write = self._register_write
        self._subscriptions: dict[str, int] = {}
        self.connected = False

    async def __aenter__(self) -> MqttLink:
        before = cancel_requests()
        try:
            await self._client.__aenter__()
        except aiomqtt.MqttError as exc:
            raise LinkError(f"cannot connect to {self.settings.host}:{self.settings.port}: {exc}") from None
        self.connected = True
        try:
            raise_lost_cancellation(before)  # aiomqtt's wait for CONNACK may have dropped one
            # Resubscribe on every connect: the broker may have restarted without our session.
            for topic, qos in self._subscriptions.items():
                await self._subscribe(topic, qos)
        except BaseException as exc:
            # `async with` does not exit what did not finish entering: close the connection here,
            # or it stays half open and its error is never read.
            await self.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.connected = False
        try:
            await self._client.__aexit__(exc_type, exc, tb)
        except aiomqtt.MqttError as error:
            log.debug("disconnect from %s: %s", self.settings.host, error)
        # aiomqtt keeps a dropped connection's error in a future that only its message iterator
        # reads; when the session ended for another reason first, nobody does, and asyncio prints
        # "Future exception was never retrieved" once the next connect replaces it. Read it here.
        disconnected = self._client._disconnected
        if disconnected.done() and not disconnected.cancelled():
            error = disconnected.exception()
            if error is not None:
                log.debug("connection to %s ended: %s", self.settings.host, error)

    def _register_write(self, client: Any, userdata: Any, sock: Any) -> None:
        loop = self._client._loop
        fd = sock.fileno()

        def write() -> None:
            try:
                client.loop_write()
            except Exception as exc:  # a broken connection: end the session, as aiomqtt does
                disconnected = self._client._disconnected
                if not disconnected.done():
                    disconnected.set_exception(exc)

        def register() -> None:
            if fd < 0 or sock.fileno() != fd:
                return  # closed before the loop got here
            with contextlib.suppress(OSError, ValueError, KeyError):
                loop.add_writer(fd, write)

        # paho may call this from the thread that runs connect(): hand it to the loop.
        loop.call_soon_threadsafe(register)

    async def subscribe(self, topic: str, qos: int = 1) -> None:
        self._subscriptions[topic] = qos
        if self.connected:
            await self._subscribe(topic, qos)

    async def _subscribe(self, topic: str, qos: int) -> None:
        try:
            await keep_cancellation(self._client.subscribe(topic, qos=qos))
        except aiomqtt.MqttError as exc:
            raise LinkError(f"subscribe to {topic} failed: {exc}") from None

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        """Publish and, for QoS 1, return only once the broker acknowledged (PUBACK).

        Gives up after ``timeout_s``: a PUBACK that never comes means a dead link.
        """
        try:
            await keep_cancellation(self._client.publish(topic, payload, qos=qos, retain=retain))
        except aiomqtt.MqttError as exc:
            raise LinkError(f"publish to {topic} failed: {exc}") from None

    async def messages(self) -> AsyncIterator[Message]:
        """Incoming messages; raises `LinkError` when the connection drops."""
        try:
            async for message in self._client.messages:
                payload = message.payload
                if isinstance(payload, str):
                    payload = payload.encode()
                elif not isinstance(payload, bytes | bytearray):
                    payload = b"" if payload is None else str(payload).encode()
                yield Message(str(message.topic), bytes(payload), bool(message.retain))
        except aiomqtt.MqttError as exc:
            raise LinkError(f"connection to {self.settings.host}:{self.settings.port} lost: {exc}") from None
