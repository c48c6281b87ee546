"""A fleet-wide MQTT subscriber for tests: decodes every telemetry batch with fleet_protocol.

It keeps a persistent session (fixed client id, QoS 1) and reconnects, so a broker restart
loses nothing the broker had accepted: what it misses, the device side lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import defaultdict

import aiomqtt

from fleet_protocol import (
    DesiredState,
    DeviceEvent,
    ReportedState,
    TelemetryBatch,
    TelemetryRecord,
    TopicKind,
    decode,
    parse_topic,
)


class FleetSubscriber:
    def __init__(self, port: int, topic: str = "fleet/#", *, client_id: str | None = None) -> None:
        self.port = port
        self.topic = topic
        self.records: list[TelemetryRecord] = []
        self.batches = 0
        self.telemetry_bytes = 0
        self.encodings: list[int] = []  # first byte of each telemetry payload
        self.states: dict[str, ReportedState] = {}
        self.events: list[DeviceEvent] = []
        self.desired: dict[str, DesiredState] = {}
        self.errors: list[str] = []
        #: The same id on the same broker resumes the session, with what was queued for it meanwhile.
        self.client_id = client_id or f"test-sub-{uuid.uuid4().hex[:8]}"
        self._task: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()

    async def __aenter__(self) -> FleetSubscriber:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.subscribed.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        client = aiomqtt.Client("127.0.0.1", self.port, identifier=self.client_id, clean_session=False)
        while True:
            try:
                async with client:
                    await client.subscribe(self.topic, qos=1)
                    self.subscribed.set()
                    async for message in client.messages:
                        self._handle(str(message.topic), bytes(message.payload))  # type: ignore[arg-type]
            except aiomqtt.MqttError:
                await asyncio.sleep(0.1)

    def _handle(self, topic: str, payload: bytes) -> None:
        parsed = parse_topic(topic)
        if not payload:
            return
        try:
            if parsed.kind is TopicKind.TELEMETRY:
                batch = decode(payload, TelemetryBatch)
                self.batches += 1
                self.telemetry_bytes += len(payload)
                self.encodings.append(payload[0])
                self.records.extend(batch.records)
            elif parsed.kind is TopicKind.STATE:
                self.states[parsed.device] = decode(payload, ReportedState)
            elif parsed.kind is TopicKind.EVENTS:
                self.events.append(decode(payload, DeviceEvent))
            elif parsed.kind is TopicKind.DESIRED:
                self.desired[parsed.device] = decode(payload, DesiredState)
        except Exception as exc:  # a contract violation: the test reports it
            self.errors.append(f"{topic}: {exc}")

    def seqs(self, device: str) -> set[int]:
        return {r.seq for r in self.records if r.device_id == device}

    def by_seq(self, device: str) -> dict[int, list[TelemetryRecord]]:
        out: dict[int, list[TelemetryRecord]] = defaultdict(list)
        for r in self.records:
            if r.device_id == device:
                out[r.seq].append(r)
        return out
