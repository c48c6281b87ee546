"""/metrics of a real controller: latest drift score per model version and site, devices by model reason."""

from __future__ import annotations

import json
import re
import time

import pytest

from fleet_protocol import ModelReason
from tests.controller.conftest import Controller
from tests.controller.factories import batch, bulk_drift, bulk_score, drift, state


def _metric(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample of the exposition ``text``, or None if it is not there."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    match = re.search(rf"^{name}{{{re.escape(wanted)}}} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else None


def _ingest(ctl: Controller, body: str | bytes, role: str = "gateway") -> dict[str, object]:
    with ctl.client(role) as client:
        response = client.post("/api/v1/ingest", content=body)
    assert response.status_code == 200, response.text
    return response.json()


def _scrape(ctl: Controller) -> str:
    with ctl.client(None) as client:
        response = client.get("/metrics")
    assert response.status_code == 200
    return response.text


def test_drift_score_is_the_latest_scored_window_of_each_model_version_and_site(
    controller: Controller,
) -> None:
    # Windows 0 and 120 first, 60 later: the latest is 120 whatever the order they arrived in.
    # Mean shift against window 0, in std: window w moved 0.1 * w on one feature of two.
    _ingest(controller, batch().model_copy(update={"drift": [drift(0.0), drift(120.0)]}).model_dump_json())
    _ingest(controller, batch().model_copy(update={"drift": [drift(60.0)]}).model_dump_json())
    unscorable = drift(180.0).model_copy(
        update={"feature_names": ["a", "b", "c"], "mean": [0.0] * 3, "std": [1.0] * 3}
    )
    _ingest(controller, batch().model_copy(update={"drift": [unscorable]}).model_dump_json())
    _ingest(
        controller,
        batch(site="site-b", devices={"dev-b": range(1, 2)})
        .model_copy(update={"drift": [drift(0.0), drift(60.0)]})
        .model_dump_json(),
        role="gateway-b",
    )
    text = _scrape(controller)
    assert _metric(text, "edgefleet_drift_score", model="sensor-mlp@1.0.0", site="site-a") == 6.0
    assert _metric(text, "edgefleet_drift_score", model="sensor-mlp@1.0.0", site="site-b") == 3.0
    assert _metric(text, "edgefleet_drift_windows", model="sensor-mlp") == 6.0


def test_metrics_and_the_drift_page_stay_fast_and_right_with_many_drift_windows(
    controller: Controller,
) -> None:
    keys = [(site, "sensor-mlp", version) for site in ("site-a", "site-b") for version in ("1.0.0", "1.1.0")]
    windows = 50_000  # 200,000 rows
    bulk_drift(controller.database_url, keys, windows)
    _scrape(controller)  # a first scrape warms the connection pool and the page cache
    started = time.perf_counter()
    text = _scrape(controller)
    elapsed = time.perf_counter() - started
    print(f"\n/metrics with {len(keys) * windows:,} drift windows: {elapsed * 1000:.0f} ms")
    for site, _, version in keys:
        score = _metric(text, "edgefleet_drift_score", model=f"sensor-mlp@{version}", site=site)
        assert score == pytest.approx(bulk_score(windows - 1))
    assert _metric(text, "edgefleet_drift_windows", model="sensor-mlp") == len(keys) * windows
    # Reading every window took seconds; a scrape must take well under Prometheus's 10 s timeout.
    assert elapsed < 1.0

    # The dashboard's drift page reads the windows it draws, the latest 240 of each key, by index.
    with controller.client(None) as browser:
        browser.post("/login", data={"token": controller.tokens["viewer"]})
        browser.get("/drift")  # warm
        started = time.perf_counter()
        page = browser.get("/drift")
        elapsed = time.perf_counter() - started
    print(f"/drift with {len(keys) * windows:,} drift windows: {elapsed * 1000:.0f} ms")
    assert page.status_code == 200
    assert page.text.count('class="drift-chart"') == 2, "one chart per model version, a line per site"
    lines = re.findall(r'<polyline class="series" points="([^"]*)"', page.text)
    assert [len(points.split()) for points in lines] == [240] * 4
    assert elapsed < 1.0


def test_devices_off_their_model_are_counted_by_reason_from_v1_and_v2_states(controller: Controller) -> None:
    body = json.loads(
        batch(devices={"dev-1": range(1, 2)})
        .model_copy(
            update={
                "devices": [
                    state("dev-old"),
                    state("dev-sig").model_copy(update={"model_reason": ModelReason.SIGNATURE_INVALID}),
                    state("dev-disk").model_copy(update={"model_reason": ModelReason.DISK_FULL}),
                    state("dev-ok"),
                ]
            }
        )
        .model_dump_json()
    )
    # A gateway forwards an older agent's state as it got it: version 1, no model_reason at all.
    del body["devices"][0]["model_reason"]
    body["devices"][0]["schema_version"] = 1
    assert _ingest(controller, json.dumps(body))["devices_updated"] == 4
    with controller.client("viewer") as viewer:
        reasons = {d["id"]: d["model_reason"] for d in viewer.get("/api/v1/devices").json()["data"]}
        failing = viewer.get("/api/v1/devices", params={"model_reason": "signature_invalid"}).json()
    assert reasons == {
        "dev-old": None,
        "dev-sig": "signature_invalid",
        "dev-disk": "disk_full",
        "dev-ok": None,
    }
    assert [d["id"] for d in failing["data"]] == ["dev-sig"]
    text = _scrape(controller)
    assert _metric(text, "edgefleet_devices_off_model", reason="signature_invalid") == 1.0
    assert _metric(text, "edgefleet_devices_off_model", reason="disk_full") == 1.0

    # The device is updated and reports again, as an old agent would: the reason no longer holds.
    body["devices"] = [{**body["devices"][0], "device_id": "dev-sig"}]
    _ingest(controller, json.dumps(body))
    with controller.client("viewer") as viewer:
        assert viewer.get("/api/v1/devices/dev-sig").json()["model_reason"] is None
    assert _metric(_scrape(controller), "edgefleet_devices_off_model", reason="signature_invalid") is None


def test_ingest_refuses_a_model_reason_in_a_version_1_state_and_stores_nothing(
    controller: Controller,
) -> None:
    body = json.loads(
        batch(devices={"dev-1": range(1, 2)})
        .model_copy(update={"devices": [state("dev-v1")]})
        .model_dump_json()
    )
    body["devices"][0] |= {"schema_version": 1, "model_reason": "disk_full"}
    with controller.client("gateway") as gateway:
        response = gateway.post("/api/v1/ingest", content=json.dumps(body))
    assert response.status_code == 422
    assert re.search(
        r"devices\.0: Value error, model_reason .*need.* schema_version 2", response.json()["detail"]
    )
    with controller.client("viewer") as viewer:
        assert viewer.get("/api/v1/devices/dev-v1").status_code == 404
