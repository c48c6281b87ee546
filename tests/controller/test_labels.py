"""Labels through ingest and ``POST /api/v1/labels``, and the accuracy they measure, on both stores.

One controller per store serves the module (each test uses its own devices): a controller takes
seconds to start, and these tests only read what they wrote.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cloud_controller.models import Role
from fleet_protocol import TelemetryRecord
from fleet_protocol.ingest import IngestBatch
from fleet_protocol.labels import DeviceLabels, Label, LabelUpload
from simulators.controller import ControllerProcess
from tests.controller.conftest import database_url
from tests.controller.factories import state

T0 = 1_700_000_000.0
MODEL = "label-mlp"


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def ctl(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, public_key_file: Path
) -> Iterator[ControllerProcess]:
    tmp = tmp_path_factory.mktemp(f"labels-{request.param}")
    for url in database_url(request.param, tmp):
        process = ControllerProcess(tmp, public_key_file, database_url=url, token_prefix="test")
        process.start(
            (
                ("gateway", Role.GATEWAY, "site-a"),
                ("gateway-b", Role.GATEWAY, "site-b"),
                ("device", Role.DEVICE, None),
            )
        )
        try:
            yield process
        finally:
            process.stop()


def _records(
    device: str, seqs: range, *, predicted: int = 0, label: int | None = None
) -> list[TelemetryRecord]:
    """Records of ``MODEL`` with ts T0 + seq, all predicting ``predicted``."""
    return [
        TelemetryRecord(
            device_id=device,
            seq=s,
            ts=T0 + s,
            model_id=MODEL,
            model_version="1.0.0",
            outputs=[0.9, 0.1],
            predicted=predicted,
            label=label,
        )
        for s in seqs
    ]


def _batch(site: str = "site-a", **parts: object) -> IngestBatch:
    return IngestBatch(site=site, gateway_id=f"gw-{site}", batch_id=uuid.uuid4().hex, **parts)  # type: ignore[arg-type]


def _ingest(ctl: ControllerProcess, body: IngestBatch, role: str = "gateway") -> dict[str, object]:
    with ctl.client(role) as client:
        response = client.post("/api/v1/ingest", content=body.model_dump_json())
    assert response.status_code == 200, response.text
    return response.json()


def _labels(
    device: str, pairs: dict[int, int], at: float = T0 + 1000, source: str | None = "station-1"
) -> DeviceLabels:
    return DeviceLabels(
        device_id=device,
        labels=[Label(seq=s, label=c, labelled_at=at, source=source) for s, c in pairs.items()],
    )


def _post(ctl: ControllerProcess, body: str | bytes, role: str = "operator") -> httpx.Response:
    with ctl.client(role) as client:
        return client.post("/api/v1/labels", content=body, headers={"Content-Type": "application/json"})


def _accuracy(ctl: ControllerProcess, **params: object) -> list[dict[str, object]]:
    with ctl.client("viewer") as client:
        response = client.get(f"/api/v1/models/{MODEL}/accuracy", params={"since": T0, **params})
    assert response.status_code == 200, response.text
    return response.json()["data"]


def _window(w: dict[str, object]) -> tuple[object, ...]:
    return (w["site_id"], w["window_start"], w["labelled"], w["correct"], w["accuracy"])


def test_ingested_labels_are_stored_once_and_joined_with_records_into_accuracy(
    ctl: ControllerProcess,
) -> None:
    # dev-i1 predicts 0 for seqs 1..20 (ts T0+1 .. T0+20); seqs 1..5 carry their label inline (0: right).
    _ingest(ctl, _batch(devices=[state("dev-i1")]))
    _ingest(ctl, _batch(site="site-b", devices=[state("dev-ib", site="site-b")]), role="gateway-b")
    records = _records("dev-i1", range(1, 6), label=0) + _records("dev-i1", range(6, 21))
    # Delayed labels for 6..15: 6..10 right, 11..15 wrong; one for a seq never stored whole (99);
    # and one for a device of site-b, which a site-a batch may not label.
    delayed = [
        _labels("dev-i1", {**dict.fromkeys(range(6, 11), 0), **dict.fromkeys(range(11, 16), 1), 99: 1})
    ]
    body = _batch(records=records, labels=[*delayed, _labels("dev-ib", {1: 1})])
    first = _ingest(ctl, body)
    assert (first["accepted"], first["labels_stored"]) == (20, 5 + 11)
    again = _ingest(ctl, body.model_copy(update={"batch_id": "retry"}))
    assert (again["duplicates"], again["labels_stored"]) == (20, 0)

    # Windows of 10 s by record ts: [T0, T0+10) holds seqs 1..9, [T0+10, T0+20) seqs 10..15 labelled.
    windows = [w for w in _accuracy(ctl, window_s=10) if w["window_start"] < T0 + 100]
    assert [_window(w) for w in windows] == [
        ("site-a", T0, 9, 9, 1.0),
        ("site-a", T0 + 10, 6, 1, pytest.approx(1 / 6)),
    ]
    assert _accuracy(ctl, window_s=10, site="site-b") == []
    assert _accuracy(ctl, window_s=10, version="2.0.0") == []


def test_a_label_upload_corrects_older_labels_and_refuses_other_sites_devices(ctl: ControllerProcess) -> None:
    _ingest(ctl, _batch(devices=[state("dev-u1")], records=_records("dev-u1", range(101, 111))))
    _ingest(ctl, _batch(site="site-b", devices=[state("dev-ub", site="site-b")]), role="gateway-b")
    wrong = LabelUpload(
        site="site-a", devices=[_labels("dev-u1", dict.fromkeys(range(101, 111), 1), at=T0 + 500)]
    )
    assert _post(ctl, wrong.model_dump_json()).json() == {"stored": 10, "unchanged": 0, "unknown_devices": []}
    assert [_window(w) for w in _accuracy(ctl, window_s=1000, site="site-a", since=T0 + 100)] == [
        ("site-a", T0, 10, 0, 0.0)
    ]

    # A correction of 101..105 (labelled later), a stale label for 106 (labelled earlier: the newer
    # stands), the same label again for 107, and devices of another site or of none.
    fix = LabelUpload(
        site="site-a",
        devices=[
            _labels("dev-u1", dict.fromkeys(range(101, 106), 0), at=T0 + 600),
            _labels("dev-ub", {1: 0}),
            _labels("dev-nowhere", {1: 0}),
        ],
    )
    result = _post(ctl, fix.model_dump_json(), role="gateway").json()
    assert result == {"stored": 5, "unchanged": 0, "unknown_devices": ["dev-nowhere", "dev-ub"]}
    listed_twice = LabelUpload.model_construct(
        site="site-a", devices=[_labels("dev-u1", {106: 0}), _labels("dev-u1", {107: 1})], schema_version=1
    )
    # One device in two entries: the contract refuses it, with the reason, and nothing is stored.
    refused = _post(ctl, listed_twice.model_dump_json())
    assert refused.status_code == 422 and "a device is listed twice" in refused.json()["detail"]
    stale = LabelUpload(
        site="site-a",
        devices=[
            DeviceLabels(
                device_id="dev-u1",
                labels=[
                    Label(seq=106, label=0, labelled_at=T0 + 1),
                    Label(seq=107, label=1, labelled_at=T0 + 700),
                ],
            )
        ],
    )
    assert _post(ctl, stale.model_dump_json()).json() == {"stored": 0, "unchanged": 2, "unknown_devices": []}
    assert [_window(w) for w in _accuracy(ctl, window_s=1000, site="site-a", since=T0 + 100)] == [
        ("site-a", T0, 10, 5, 0.5)
    ]


def test_label_uploads_are_refused_with_the_reason_before_the_database(ctl: ControllerProcess) -> None:
    upload = LabelUpload(site="site-a", devices=[_labels("dev-u1", {101: 0})]).model_dump(mode="json")
    other_site = _post(
        ctl, LabelUpload(site="site-a", devices=[_labels("dev-u1", {101: 0})]).model_dump_json(), "gateway-b"
    )
    assert other_site.status_code == 403 and "for site site-b, not site-a" in other_site.json()["detail"]
    assert _post(ctl, b"{}", role="viewer").status_code == 403
    assert _post(ctl, b"{}", role="device").status_code == 403
    twice = {
        **upload,
        "devices": [{"device_id": "dev-u1", "labels": [{"seq": 3, "label": 0}, {"seq": 3, "label": 1}]}],
    }
    cases = {
        "labels seq 3 a second time": twice,
        "schema_version 2": {**upload, "schema_version": 2},
        "site": {**upload, "site": "bad/site"},
        "label": {**upload, "devices": [{"device_id": "dev-u1", "labels": [{"seq": 1, "label": -1}]}]},
        "a boolean is not a number": {
            **upload,
            "devices": [{"device_id": "dev-u1", "labels": [{"seq": 1, "label": 0, "labelled_at": False}]}],
        },
    }
    for reason, body in cases.items():
        response = _post(ctl, httpx.Request("POST", "/", json=body).content)
        assert response.status_code == 422 and reason in response.json()["detail"], (reason, response.text)
    assert _post(ctl, b"not json").status_code == 422
    assert _post(ctl, b"x" * (16 * 1024 * 1024 + 1)).status_code == 413
    # Nothing of the refused uploads was stored: dev-u1's labels are the ones of the test above, or none.
    for window in _accuracy(ctl, window_s=1000, site="site-a", since=T0 + 100):
        assert window["labelled"] == 10
