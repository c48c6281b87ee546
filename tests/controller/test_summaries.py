"""Window summaries from gateways: stored once, refused in a v1 batch, listed per device."""

from __future__ import annotations

import json

import httpx

from tests.controller.conftest import Controller
from tests.controller.factories import batch, summary


def _ingest(ctl: Controller, body: bytes) -> httpx.Response:
    with ctl.client("gateway") as client:
        return client.post("/api/v1/ingest", content=body, headers={"Content-Type": "application/json"})


def test_ingest_stores_each_window_summary_once(controller: Controller) -> None:
    # Window 60 comes in two pieces: the second holds records that arrived after it closed.
    pieces = [
        summary("dev-s1", 0.0),
        summary("dev-s1", 60.0),
        summary("dev-s1", 60.0, first_seq=500, count=4),
    ]
    first = batch(devices={"dev-s1": range(1, 3)}).model_copy(update={"summaries": pieces})
    response = _ingest(controller, first.model_dump_json().encode())
    assert response.status_code == 200, response.text
    assert response.json()["summaries_stored"] == 3
    again = _ingest(controller, first.model_copy(update={"batch_id": "retry"}).model_dump_json().encode())
    assert again.status_code == 200, again.text
    assert (again.json()["summaries_stored"], again.json()["duplicates"]) == (0, 2)
    with controller.client("viewer") as client:
        listed = client.get("/api/v1/devices/dev-s1/summaries").json()
        metrics = client.get("/metrics").text
    assert listed["count"] == 3
    assert [(s["window_start"], s["first_seq"]) for s in listed["data"]] == [(60.0, 500), (60.0, 1), (0.0, 1)]
    assert "edgefleet_ingest_summaries_total 3.0" in metrics


def test_ingest_refuses_a_v1_batch_with_summaries_and_stores_nothing(sqlite_controller: Controller) -> None:
    body = json.loads(
        batch(devices={"dev-s4": range(1, 3)})
        .model_copy(update={"summaries": [summary("dev-s4", 0.0)]})
        .model_dump_json()
    )
    body["schema_version"] = 1
    response = _ingest(sqlite_controller, json.dumps(body).encode())
    assert response.status_code == 422
    assert "summaries need schema_version 2" in response.json()["detail"]
    with sqlite_controller.client("viewer") as client:
        assert client.get("/api/v1/devices/dev-s4/summaries").json() == {"data": [], "count": 0}
        assert client.get("/api/v1/devices/dev-s4/telemetry").json() == []


def test_ingest_accepts_a_v1_batch_without_summaries(sqlite_controller: Controller) -> None:
    body = json.loads(batch(devices={"dev-s5": range(1, 6)}).model_dump_json())
    body["schema_version"] = 1
    del body["summaries"]  # a version 1 gateway does not know the field
    response = _ingest(sqlite_controller, json.dumps(body).encode())
    assert response.status_code == 200, response.text
    assert (response.json()["accepted"], response.json()["summaries_stored"]) == (5, 0)


def test_summaries_endpoint_filters_by_window_start_newest_first(controller: Controller) -> None:
    windows = [summary("dev-s2", w * 60.0) for w in range(5)] + [summary("dev-s3", 120.0)]
    payload = batch(devices={"dev-s2": range(1, 2)}).model_copy(update={"summaries": windows})
    assert _ingest(controller, payload.model_dump_json().encode()).json()["summaries_stored"] == 6
    with controller.client("viewer") as client:
        between = client.get("/api/v1/devices/dev-s2/summaries", params={"since": 60, "until": 240}).json()
        newest = client.get("/api/v1/devices/dev-s2/summaries", params={"limit": 2}).json()
    assert [s["window_start"] for s in between["data"]] == [180.0, 120.0, 60.0]
    assert between["count"] == 3
    assert [s["window_start"] for s in newest["data"]] == [240.0, 180.0]
    assert newest["count"] == 5, "count is every match, data at most limit"
    window = between["data"][1]
    assert (window["device_id"], window["site_id"], window["count"], window["anomalies"]) == (
        "dev-s2",
        "site-a",
        60,
        2,
    )
    assert (window["feature_names"], window["mean"]) == (["temp", "vib"], [27.0, 0.5])
    assert [c["predicted"] for c in window["classes"]] == [0, 3]


def test_summaries_endpoint_refuses_non_finite_bounds(sqlite_controller: Controller) -> None:
    with sqlite_controller.client("viewer") as client:
        response = client.get("/api/v1/devices/dev-s2/summaries", params={"since": "nan"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "since"]
