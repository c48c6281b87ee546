"""Readings that a local sensor process publishes as JSON on an MQTT topic."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator

from edge_agent.exceptions import LinkError
from edge_agent.mqtt_link import LinkSettings, MqttLink
from edge_agent.sources.base import Reading, SensorSource
from fleet_protocol.pacing import Backoff

log = logging.getLogger(__name__)


class MqttTopicSource(SensorSource):
    """Payload: ``{"ts": 1.0, "label": 2, "values": {...} or [...]}`` or a bare feature mapping.

    An unparsable payload yields a reading holding the raw text, which preprocessing rejects
    and counts: the stream goes on.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        topic: str,
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = 30.0,
    ) -> None:
        self.topic = topic
        self.backoff = Backoff(reconnect_min_s, reconnect_max_s)
        client_id = f"sensor-{uuid.uuid4().hex[:12]}"
        self._link = MqttLink(LinkSettings(host=host, port=port, client_id=client_id, clean_session=True))

    async def readings(self, start_cursor: str | None = None) -> AsyncIterator[Reading]:
        backoff = self.backoff
        await self._link.subscribe(self.topic, qos=1)
        while True:
            try:
                async with self._link:
                    backoff.reset()
                    async for message in self._link.messages():
                        yield _reading(message.payload)
            except LinkError as exc:
                delay = backoff.next_delay()
                # Once per doubling, not on every attempt: a sensor bus down for days must not fill the log.
                if backoff.attempt & (backoff.attempt - 1) == 0:
                    log.warning(
                        "sensor topic %s: %s; attempt %d, retrying in %.1fs",
                        self.topic,
                        exc,
                        backoff.attempt,
                        delay,
                    )
                await asyncio.sleep(delay)


def _reading(payload: bytes) -> Reading:
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return Reading(ts=time.time(), values={"_unparsable": payload[:200].decode(errors="replace")})
    if isinstance(data, dict) and "values" in data:
        ts = data.get("ts")
        label = data.get("label")
        return Reading(
            ts=float(ts) if isinstance(ts, int | float) else time.time(),
            values=data["values"],
            label=label if isinstance(label, int) and not isinstance(label, bool) else None,
        )
    return Reading(ts=time.time(), values=data if isinstance(data, dict | list) else {"_value": data})
