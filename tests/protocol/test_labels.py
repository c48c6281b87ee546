"""The delayed-labels contract: what a labelling system may send, and what is refused."""

from __future__ import annotations

import json

import pytest

from fleet_protocol import (
    LabelBatch,
    LabelUpload,
    MalformedPayload,
    TopicKind,
    UnknownSchemaVersion,
    decode,
    encode,
    labels_topic,
    parse_topic,
)
from fleet_protocol.ingest import MAX_INGEST_RECORDS, IngestBatch


def test_a_label_batch_round_trips_on_its_topic() -> None:
    batch = LabelBatch(device_id="d1", site="s1", labels=[{"seq": 7, "label": 2, "source": "station-3"}])
    assert decode(encode(batch), LabelBatch) == batch
    assert parse_topic(labels_topic("s1", "d1")).kind is TopicKind.LABELS


@pytest.mark.parametrize(
    "labels, reason",
    [
        ([{"seq": 1, "label": 0}, {"seq": 1, "label": 1}], "a second time"),
        ([{"seq": 0, "label": 0}], "greater than or equal to 1"),
        ([{"seq": 1, "label": -1}], "greater than or equal to 0"),
        ([], "at least 1"),
        ([{"seq": 1, "label": 1, "source": "a/b"}], "pattern"),
        ([{"seq": 1, "label": True}], "valid integer"),
        ([{"seq": 2.0, "label": 1}], "valid integer"),
    ],
)
def test_a_bad_label_batch_is_refused_with_the_reason(labels: list[dict], reason: str) -> None:
    raw = json.dumps({"schema_version": 1, "device_id": "d1", "site": "s1", "labels": labels}).encode()
    with pytest.raises(MalformedPayload, match=reason):
        decode(raw, LabelBatch)


def test_an_unknown_label_schema_version_is_refused() -> None:
    with pytest.raises(UnknownSchemaVersion):
        decode(b'{"schema_version": 9, "device_id": "d1", "site": "s1", "labels": []}', LabelBatch)


def test_labels_ride_on_ingest_batches_from_version_4_only() -> None:
    labels = [{"device_id": "d1", "labels": [{"seq": 1, "label": 3}]}]
    assert IngestBatch(site="s1", gateway_id="g", batch_id="b", labels=labels).labels[0].labels[0].label == 3
    with pytest.raises(ValueError, match="labels need schema_version 4"):
        IngestBatch(schema_version=3, site="s1", gateway_id="g", batch_id="b", labels=labels)
    many = [
        {"device_id": f"d{i}", "labels": [{"seq": s, "label": 0} for s in range(1, 1001)]} for i in range(6)
    ]
    assert MAX_INGEST_RECORDS < 6000
    with pytest.raises(ValueError, match="labels in one batch"):
        IngestBatch(site="s1", gateway_id="g", batch_id="b", labels=many)


def test_an_upload_is_bounded_and_names_each_device_once() -> None:
    one = {"device_id": "d1", "labels": [{"seq": 1, "label": 0}]}
    assert LabelUpload(site="s1", devices=[one]).devices[0].device_id == "d1"
    with pytest.raises(ValueError, match="listed twice"):
        LabelUpload(site="s1", devices=[one, one])
    big = [
        {"device_id": f"d{i}", "labels": [{"seq": s, "label": 0} for s in range(1, 601)]} for i in range(2)
    ]
    with pytest.raises(ValueError, match="at most 1000"):
        LabelUpload(site="s1", devices=big)
