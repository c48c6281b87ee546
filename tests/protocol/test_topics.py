from __future__ import annotations

import pytest

from fleet_protocol import (
    InvalidTopic,
    TopicKind,
    desired_topic,
    events_topic,
    parse_topic,
    site_subscription,
    state_topic,
    telemetry_topic,
)


def test_topic_tree_is_exactly_the_documented_one() -> None:
    assert telemetry_topic("plant-1", "dev-7") == "fleet/plant-1/dev-7/telemetry"
    assert state_topic("plant-1", "dev-7") == "fleet/plant-1/dev-7/state"
    assert desired_topic("plant-1", "dev-7") == "fleet/plant-1/dev-7/desired"
    assert events_topic("plant-1", "dev-7") == "fleet/plant-1/dev-7/events"
    assert site_subscription("plant-1") == "fleet/plant-1/+/#"


def test_parse_topic_round_trips() -> None:
    parsed = parse_topic("fleet/plant-1/dev-7/telemetry")
    assert (parsed.site, parsed.device, parsed.kind) == ("plant-1", "dev-7", TopicKind.TELEMETRY)
    assert str(parsed) == "fleet/plant-1/dev-7/telemetry"


@pytest.mark.parametrize("device", ["a/b", "+", "#", "", "x" * 65, "-lead", "sp ace"])
def test_topic_rejects_ids_that_would_change_routing(device: str) -> None:
    with pytest.raises(InvalidTopic, match="invalid device id"):
        telemetry_topic("site", device)


@pytest.mark.parametrize(
    "topic", ["fleet/s/d", "fleet/s/d/telemetry/x", "other/s/d/state", "fleet/s/d/unknown", "fleet/s/+/state"]
)
def test_parse_topic_rejects_topics_outside_the_tree(topic: str) -> None:
    with pytest.raises(InvalidTopic):
        parse_topic(topic)
