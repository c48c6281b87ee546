"""Follows a site's topic tree like any MQTT client would, and keeps what the report needs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import defaultdict
from dataclasses import dataclass, field

from edge_agent.exceptions import LinkError
from edge_agent.mqtt_link import LinkSettings, MqttLink
from fleet_protocol import ProtocolError, ReportedState, TelemetryBatch, TopicKind, decode, parse_topic
from fleet_protocol.pacing import Backoff

log = logging.getLogger(__name__)


@dataclass
class FleetView:
    seqs: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    stamps: dict[tuple[str, int], float] = field(default_factory=dict)
    duplicates: int = 0
    seq_reused: int = 0  # the same (device, seq) for two different readings: must stay 0
    records: int = 0
    anomalies: int = 0
    correct: int = 0
    labelled: int = 0
    bytes: int = 0
    states: dict[str, ReportedState] = field(default_factory=dict)
    rejected: int = 0
    flagged: set[tuple[str, int]] = field(default_factory=set)
    #: Per second of reading time: [correct, labelled], for accuracy before and after drift.
    accuracy: dict[int, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))

    def accuracy_between(self, start: float, end: float) -> float | None:
        correct = labelled = 0
        for second, (c, n) in self.accuracy.items():
            if start <= second < end:
                correct, labelled = correct + c, labelled + n
        return round(correct / labelled, 4) if labelled else None


class SiteObserver:
    """Subscribes to ``fleet/{site}/#`` with a persistent session: nothing the broker took is missed."""

    def __init__(self, site: str, port: int, view: FleetView) -> None:
        self.view = view
        self.topic = f"fleet/{site}/#"
        self.link = MqttLink(
            LinkSettings(host="127.0.0.1", port=port, client_id=f"observer-{site}-{uuid.uuid4().hex[:6]}")
        )
        self.ready = asyncio.Event()

    async def run(self) -> None:
        backoff = Backoff(0.1, 1.0)
        await self.link.subscribe(self.topic, qos=1)
        while True:
            try:
                async with self.link:
                    self.ready.set()
                    backoff.reset()
                    async for message in self.link.messages():
                        self._handle(message.topic, message.payload)
            except LinkError as exc:
                log.debug("observer: %s", exc)
                await asyncio.sleep(backoff.next_delay())

    def _handle(self, topic: str, payload: bytes) -> None:
        if not payload:
            return
        view = self.view
        with contextlib.suppress(ProtocolError):
            kind = parse_topic(topic).kind
            if kind is TopicKind.TELEMETRY:
                batch = decode(payload, TelemetryBatch)
                view.bytes += len(payload)
                seen = view.seqs[batch.device_id]
                for record in batch.records:
                    key = (batch.device_id, record.seq)
                    if record.seq in seen:
                        view.duplicates += 1
                        view.seq_reused += view.stamps[key] != record.ts
                        continue
                    view.stamps[key] = record.ts
                    seen.add(record.seq)
                    view.records += 1
                    if record.anomaly:
                        view.anomalies += 1
                        view.flagged.add(key)
                    if record.label is not None:
                        view.labelled += 1
                        view.correct += record.predicted == record.label
                        bucket = view.accuracy[int(record.ts)]
                        bucket[0] += record.predicted == record.label
                        bucket[1] += 1
                return
            if kind is TopicKind.STATE:
                state = decode(payload, ReportedState)
                view.states[state.device_id] = state
                return
            return
        view.rejected += 1
