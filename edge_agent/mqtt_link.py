"""The agent's one MQTT adapter: aiomqtt (paho-mqtt on the asyncio loop, no thread per client).

Nothing else in edge_agent imports aiomqtt or paho; a simulator runs thousands of links
on one loop. Reconnection lives outside the client, in the caller's loop, with
`fleet_protocol.pacing.Backoff`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType

import aiomqtt

from edge_agent.exceptions import LinkError

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
        )
        self._subscriptions: dict[str, int] = {}
        self.connected = False

    async def __aenter__(self) -> MqttLink:
        try:
            await self._client.__aenter__()
        except aiomqtt.MqttError as exc:
            raise LinkError(f"cannot connect to {self.settings.host}:{self.settings.port}: {exc}") from None
        self.connected = True
        # Resubscribe on every connect: the broker may have restarted without our session.
        for topic, qos in self._subscriptions.items():
            await self._subscribe(topic, qos)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.connected = False
        try:
            await self._client.__aexit__(exc_type, exc, tb)
        except aiomqtt.MqttError as error:
            log.debug("disconnect from %s: %s", self.settings.host, error)

    async def subscribe(self, topic: str, qos: int = 1) -> None:
        self._subscriptions[topic] = qos
        if self.connected:
            await self._subscribe(topic, qos)

    async def _subscribe(self, topic: str, qos: int) -> None:
        try:
            await self._client.subscribe(topic, qos=qos)
        except aiomqtt.MqttError as exc:
            raise LinkError(f"subscribe to {topic} failed: {exc}") from None

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        """Publish and, for QoS 1, return only once the broker acknowledged (PUBACK).

        Gives up after ``timeout_s``: a PUBACK that never comes means a dead link.
        """
        try:
            await self._client.publish(topic, payload, qos=qos, retain=retain)
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
