"""Every MQTT message a gateway receives becomes a parsed payload, nothing, or a `Rejection`.

Nothing here raises on bad input: hostile bytes on any topic end as a rejection with a
reason (the metric label) and a detail (what was wrong), kept with the raw bytes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from fleet_protocol import (
    DeviceEvent,
    DeviceTopic,
    LabelBatch,
    ProtocolError,
    ReportedState,
    TelemetryBatch,
    TopicKind,
    decode,
    parse_topic,
)

Parsed = TelemetryBatch | ReportedState | DeviceEvent | LabelBatch


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: str
    detail: str


_MODELS: dict[TopicKind, type[Parsed]] = {
    TopicKind.TELEMETRY: TelemetryBatch,
    TopicKind.STATE: ReportedState,
    TopicKind.EVENTS: DeviceEvent,
    TopicKind.LABELS: LabelBatch,
}


def validate(topic: str, payload: bytes, site: str) -> Parsed | Rejection | None:
    """Parse one message of ``fleet/{site}/+/#``.

    Returns
    -------
    TelemetryBatch, ReportedState, DeviceEvent or LabelBatch
        A payload that meets the contract and belongs to the device of its topic.
    Rejection
        Why it does not.
    None
        Nothing to do: desired state (the gateway's own retained messages) or a cleared
        retained state.
    """
    parsed_topic = _topic(topic)
    if isinstance(parsed_topic, Rejection):
        return parsed_topic
    if parsed_topic.site != site:
        return Rejection("wrong_site", f"topic is for site {parsed_topic.site}, this gateway serves {site}")
    kind = parsed_topic.kind
    if kind is TopicKind.DESIRED or (kind is TopicKind.STATE and not payload):
        return None
    try:
        message = decode(payload, _MODELS[kind])
    except ProtocolError as exc:
        return Rejection(exc.reason, str(exc))
    if message.device_id != parsed_topic.device:
        return Rejection(
            "device_mismatch",
            f"{kind.value} payload is from device {message.device_id!r},"
            f" published on the topic of {parsed_topic.device!r}",
        )
    if isinstance(message, TelemetryBatch | ReportedState | LabelBatch) and message.site != site:
        return Rejection("site_mismatch", f"payload names site {message.site!r} on a topic of site {site!r}")
    return message


@functools.lru_cache(maxsize=16384)
def _topic(topic: str) -> DeviceTopic | Rejection:
    """`parse_topic`, remembered: a site's devices publish on the same few topics all day."""
    try:
        return parse_topic(topic)
    except ProtocolError as exc:
        return Rejection(exc.reason, str(exc))
