"""The gateway's one MQTT adapter: aiomqtt (paho-mqtt on the asyncio loop), with manual acks.

The gateway acknowledges a QoS 1 message only after what it did with it is committed to its
store: a gateway killed at any instant leaves every unacknowledged message with the broker,
which sends it again on the next connection (persistent session), and deduplication on
``(device_id, seq)`` absorbs what had been committed already. aiomqtt does not expose paho's
manual acknowledgement, so this module reaches into it (its paho client, its queue), here and
nowhere else (aiomqtt is pinned at 2.5.1, paho-mqtt at 2.2.0). More reaches make the link
cheaper per message: paho's socket is read ahead (paho asks it for a packet's first byte, then
each byte of its length, then the rest: a system call each); a received message goes straight to
``on_message`` (paho's dispatch takes two locks and matches the topic against callbacks this
link never adds); paho's debug lines (several per message) are not built while nobody listens;
and the acknowledgements of a committed batch go out as one write (paho writes each on its own).
"""

from __future__ import annotations

import logging
import ssl
import struct
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

import aiomqtt
import paho.mqtt.client as paho_mqtt

from edge_gateway.exceptions import LinkError
from fleet_protocol.pacing import cancel_requests, keep_cancellation, raise_lost_cancellation

log = logging.getLogger(__name__)

_READ_AHEAD = 256 * 1024
_PUBACK = 0x40020000  # PUBACK, remaining length 2: the first two bytes of every PUBACK packet


class _ReadAhead:
    """paho's socket, read ahead: one ``recv`` from the kernel serves many of paho's small ones.

    ``pending`` tells aiomqtt's reader that bytes are waiting here (it asks SSL sockets the
    same), so it goes on reading until none are left instead of waiting for the socket.
    """

    __slots__ = ("_at", "_buffer", "_sock")

    def __init__(self, sock: object) -> None:
        self._sock = sock
        self._buffer = b""
        self._at = 0

    def recv(self, size: int) -> bytes:
        buffer, at = self._buffer, self._at
        if at >= len(buffer):
            buffer = self._sock.recv(max(size, _READ_AHEAD))  # type: ignore[attr-defined]
            if not buffer:
                return buffer  # closed
            self._buffer, at = buffer, 0
        chunk = buffer[at : at + size]
        self._at = at + len(chunk)
        return chunk

    def pending(self) -> int:
        inner = getattr(self._sock, "pending", None)
        return len(self._buffer) - self._at + (inner() if inner is not None else 0)

    def __getattr__(self, name: str) -> object:
        return getattr(self._sock, name)


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes
    retain: bool
    qos: int
    mid: int
    #: Which connection delivered it: a message id means nothing on another connection.
    generation: int


class MqttLink:
    """One persistent-session connection; ``async with link:`` connects, again after a drop."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        client_id: str,
        username: str | None = None,
        password: str | None = None,
        keepalive_s: int = 30,
        timeout_s: float = 10.0,
        tls: ssl.SSLContext | None = None,
        on_message: Callable[[Message], None] = lambda message: None,
    ) -> None:
        self.host, self.port = host, port
        self.on_message = on_message
        self._client = aiomqtt.Client(
            host,
            port,
            identifier=client_id,
            username=username,
            password=password,
            keepalive=keepalive_s,
            clean_session=False,
            timeout=timeout_s,
            tls_context=tls,
        )
        paho = self._client._client
        # paho sends no PUBACK until `ack` is called.
        paho.manual_ack_set(True)
        # A new generation starts in the CONNACK callback, before any message of the new
        # connection is queued (the broker resends unacknowledged ones right after CONNACK).
        on_connect = paho.on_connect

        def new_generation(*args: object) -> None:
            self.generation += 1
            on_connect(*args)

        paho.on_connect = new_generation
        # Called with each new socket, before any packet is read from it.
        on_socket_open = paho.on_socket_open

        def read_ahead(client: paho_mqtt.Client, userdata: object, sock: object) -> None:
            client._sock = _ReadAhead(sock)  # type: ignore[assignment]
            on_socket_open(client, userdata, client._sock)  # type: ignore[misc]

        paho.on_socket_open = read_ahead
        # Messages go straight from paho to ``on_message``: aiomqtt's own message objects and its
        # queue, iterated with a task per message, cost more than the rest of the gateway's work.
        paho.on_message = self._deliver
        # Instance attributes, found before paho's methods of the same name.
        paho._handle_on_message = lambda message: self._deliver(paho, None, message)  # type: ignore[method-assign]
        easy_log = paho._easy_log

        def quiet_debug(level: int, fmt: str, *args: object) -> None:
            logger = paho._logger
            if (
                level == paho_mqtt.MQTT_LOG_DEBUG
                and paho.on_log is None
                and (logger is None or not logger.isEnabledFor(logging.DEBUG))
            ):
                return
            easy_log(level, fmt, *args)

        paho._easy_log = quiet_debug  # type: ignore[method-assign]
        self._subscriptions: dict[str, int] = {}
        self.generation = 0
        self.connected = False
        #: Messages acknowledged to the broker since start, over all connections.
        self.acked = 0

    async def __aenter__(self) -> MqttLink:
        before = cancel_requests()
        try:
            await self._client.__aenter__()
        except aiomqtt.MqttError as exc:
            raise LinkError(f"cannot connect to broker {self.host}:{self.port}: {exc}") from None
        self.connected = True
        try:
            raise_lost_cancellation(before)  # aiomqtt's wait for CONNACK may have dropped one
            # Resubscribe every time: a broker that lost its store lost our session with it.
            for topic, qos in self._subscriptions.items():
                await self._subscribe(topic, qos)
        except BaseException as exc:
            # `async with` does not exit what did not finish entering: close the connection here.
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
            log.debug("disconnect from %s:%d: %s", self.host, self.port, error)
        # A dropped connection's error waits in a future only aiomqtt's message iterator reads.
        disconnected = self._client._disconnected
        if disconnected.done() and not disconnected.cancelled() and disconnected.exception() is not None:
            log.debug("connection to %s:%d ended: %s", self.host, self.port, disconnected.exception())

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
        """Publish; for QoS 1, return once the broker acknowledged."""
        try:
            await keep_cancellation(self._client.publish(topic, payload, qos=qos, retain=retain))
        except aiomqtt.MqttError as exc:
            raise LinkError(f"publish to {topic} failed: {exc}") from None

    def ack(self, messages: list[Message]) -> int:
        """Acknowledge what this connection delivered; returns how many were acknowledged.

        Messages of an earlier connection are skipped: the broker sends them again anyway, and
        their ids may name other messages on this one.
        """
        if not self.connected:
            return 0
        generation = self.generation
        mids = [m.mid for m in messages if m.qos == 1 and m.generation == generation]
        paho = self._client._client
        if mids:
            # What paho's ack() queues for each, in one packet of the out queue: one write.
            paho._packet_queue(
                paho_mqtt.PUBACK, struct.pack(f"!{len(mids)}I", *(_PUBACK | m for m in mids)), 0, 0
            )
        acked = len(mids)
        for message in messages:
            if message.qos == 2 and message.generation == generation:
                paho.ack(message.mid, message.qos)
                acked += 1
        self.acked += acked
        return acked

    def _deliver(self, client: object, userdata: object, message: paho_mqtt.MQTTMessage) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:  # not a topic of the tree: validation rejects it, with its bytes
            topic = repr(message._topic)
        self.on_message(
            Message(
                topic,
                message.payload,
                bool(message.retain),
                message.qos,
                message.mid,
                self.generation,
            )
        )

    async def until_disconnected(self) -> None:
        """Return never; raise `LinkError` when the connection drops. Messages go to ``on_message``."""
        try:
            async for _ in self._client.messages:
                pass
        except aiomqtt.MqttError as exc:
            raise LinkError(f"connection to broker {self.host}:{self.port} lost: {exc}") from None
        raise LinkError(f"connection to broker {self.host}:{self.port} ended")
