"""The MQTT topic tree every daemon and any MQTT client shares.

``fleet/{site}/{device}/{kind}`` with ``kind`` one of telemetry, state, desired, events, labels.
``mosquitto_sub -t 'fleet/#'`` follows a whole fleet.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from enum import StrEnum

from fleet_protocol.exceptions import InvalidTopic

ROOT = "fleet"

# MQTT wildcards and separators can never be part of an id: they would change
# which subscribers a message reaches.
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")  # messages.ID_PATTERN publishes it


class TopicKind(StrEnum):
    TELEMETRY = "telemetry"  # device -> gateway, QoS 1
    STATE = "state"  # retained reported state; the Last Will marks the device offline
    DESIRED = "desired"  # retained desired state, cloud -> gateway -> device
    EVENTS = "events"  # OTA progress, errors
    LABELS = "labels"  # delayed ground truth from a labelling system at the site, QoS 1


@dataclass(frozen=True, slots=True)
class DeviceTopic:
    """A parsed ``fleet/{site}/{device}/{kind}`` topic."""

    site: str
    device: str
    kind: TopicKind

    def __str__(self) -> str:
        return f"{ROOT}/{self.site}/{self.device}/{self.kind.value}"


@functools.lru_cache(maxsize=65536)
def _is_id(value: str) -> bool:
    # Cached: a gateway checks the same few thousand ids on every message.
    return _ID.match(value) is not None


def validate_id(value: str, what: str = "id") -> str:
    """Return ``value`` if it is a valid site or device id, else raise `InvalidTopic`.

    Parameters
    ----------
    value : str
        The id to check: 1 to 64 characters of letters, digits, ``_ . : -``,
        starting with a letter or digit.
    what : str
        What the id names, for the error message ("site", "device").
    """
    if not isinstance(value, str) or not _is_id(value):
        raise InvalidTopic(
            f"invalid {what} id {value!r}: use 1-64 characters of letters, digits, '_', '.',"
            " ':' or '-', starting with a letter or digit"
        )
    return value


def device_topic(site: str, device: str, kind: TopicKind | str) -> str:
    """Build the topic for one device and one kind of message.

    Parameters
    ----------
    site, device : str
        Ids checked by `validate_id`.
    kind : TopicKind or str
        telemetry, state, desired or events.

    Returns
    -------
    str
        ``fleet/{site}/{device}/{kind}``.
    """
    try:
        kind = TopicKind(kind)
    except ValueError:
        raise InvalidTopic(f"unknown topic kind {kind!r}") from None
    return str(DeviceTopic(validate_id(site, "site"), validate_id(device, "device"), kind))


def telemetry_topic(site: str, device: str) -> str:
    return device_topic(site, device, TopicKind.TELEMETRY)


def state_topic(site: str, device: str) -> str:
    return device_topic(site, device, TopicKind.STATE)


def desired_topic(site: str, device: str) -> str:
    return device_topic(site, device, TopicKind.DESIRED)


def events_topic(site: str, device: str) -> str:
    return device_topic(site, device, TopicKind.EVENTS)


def labels_topic(site: str, device: str) -> str:
    return device_topic(site, device, TopicKind.LABELS)


def site_subscription(site: str) -> str:
    """The filter a gateway subscribes to: every message of every device of ``site``."""
    return f"{ROOT}/{validate_id(site, 'site')}/+/#"


def parse_topic(topic: str) -> DeviceTopic:
    """Split a topic of the tree into its parts.

    Raises
    ------
    InvalidTopic
        When the topic is not ``fleet/{site}/{device}/{kind}`` with valid ids and kind.
    """
    parts = topic.split("/")
    if len(parts) != 4 or parts[0] != ROOT:
        raise InvalidTopic(f"topic {topic!r} is not of the form {ROOT}/{{site}}/{{device}}/{{kind}}")
    _, site, device, kind = parts
    try:
        parsed_kind = TopicKind(kind)
    except ValueError:
        raise InvalidTopic(f"topic {topic!r} has unknown kind {kind!r}") from None
    return DeviceTopic(validate_id(site, "site"), validate_id(device, "device"), parsed_kind)
