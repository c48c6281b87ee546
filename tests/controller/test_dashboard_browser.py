"""The operators' dashboard in a real headless Chromium: it loads clean and shows the seeded fleet."""

from __future__ import annotations

import time
from pathlib import Path

from cloud_controller.waves import position
from fleet_protocol import DeviceEvent, ModelReason, OtaState, Severity, TelemetryRecord
from model_compiler.archive import pack
from tests.controller.conftest import Controller
from tests.controller.factories import batch, drift, state, summary
from tests.controller.rollout_fleet import make_fleet, shadow

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def test_dashboard_shows_the_seeded_fleet_without_console_errors(
    chromium: str, sqlite_controller: Controller, bundles, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import sync_playwright

    ctl = sqlite_controller
    seeded = batch(devices={"press-1": range(1, 21)}).model_copy(
        update={
            "devices": [
                state("press-1").model_copy(update={"model_reason": ModelReason.SIGNATURE_INVALID}),
                state("press-2"),
                state("lathe-1", online=False),
            ],
            "drift": [drift(float(w * 60)) for w in range(6)],
            "summaries": [summary("press-1", float(w * 60)) for w in range(3)],
            "events": [
                DeviceEvent(
                    device_id="press-1",
                    kind="model.load_failed",
                    severity=Severity.ERROR,
                    message="bundle refused",
                )
            ],
        }
    )
    # press-2's records of the last minutes, labelled inline: 3 of 4 right.
    labelled = batch(devices={}).model_copy(
        update={
            "records": [
                TelemetryRecord(
                    device_id="press-2",
                    seq=s,
                    ts=time.time() - 120 + s,
                    model_id="sensor-mlp",
                    model_version="1.0.0",
                    outputs=[0.9, 0.1],
                    predicted=0,
                    label=0 if s % 4 else 1,
                )
                for s in range(1, 41)
            ]
        }
    )
    with ctl.client("gateway") as gateway:
        assert gateway.post("/api/v1/ingest", content=seeded.model_dump_json()).status_code == 200
        assert (
            gateway.post("/api/v1/ingest", content=labelled.model_dump_json()).json()["labels_stored"] == 40
        )
    with ctl.client("operator") as operator:
        assert (
            operator.post("/api/v1/bundles", content=pack(bundles["onnx-int8"]).read_bytes()).status_code
            == 201
        )

    ARTIFACTS.mkdir(exist_ok=True)
    errors: list[str] = []
    with sync_playwright() as p:
        # Playwright gives each launch a fresh, empty profile of its own.
        browser = p.chromium.launch(executable_path=chromium, args=FLAGS)
        page = browser.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{ctl.url}/")
        assert page.url.endswith("/login"), "the dashboard asks for a token first"
        page.fill("input[name=token]", ctl.tokens["viewer"])
        page.click("button[type=submit]")
        page.wait_for_selector("#devices")
        table = page.inner_text("#devices")
        for device in ("press-1", "press-2", "lathe-1"):
            assert device in table
        assert page.inner_text("#sites").split() == ["site", "online", "offline", "site-a", "2", "1"]
        assert page.locator("#versions-chart rect").count() == 1
        page.screenshot(path=str(ARTIFACTS / "dashboard-overview.png"), full_page=True)
        page.click("text=press-1")
        page.wait_for_selector("#recent")
        assert page.locator("#recent tr").count() == 21  # header + the 20 records
        assert "model.load_failed" in page.inner_text("#events")
        assert page.inner_text("#model-reason") == "signature invalid"
        assert page.locator("#summaries tr").count() == 4  # header + the 3 windows
        assert "temp=27" in page.inner_text("#summaries tr:nth-child(2)"), "newest window first"
        page.goto(f"{ctl.url}/registry")
        assert "sensor-mlp@1.0.0" in page.inner_text("main")
        assert page.locator(".compiler-table tr").count() >= 2
        page.goto(f"{ctl.url}/drift")
        assert page.locator(".drift-chart polyline").count() == 1
        page.screenshot(path=str(ARTIFACTS / "dashboard-drift.png"), full_page=True)
        page.click("nav >> text=Accuracy")
        page.wait_for_selector(".accuracy-chart")
        # One version at one site: a line, or a dot when the records fell in one window.
        assert page.locator(".accuracy-chart polyline, .accuracy-chart .dot").count() >= 1
        assert "alarm floor 80 %" in (page.locator(".accuracy-chart").text_content() or "")
        page.click("nav >> text=Alarms")
        page.wait_for_selector("#open-alarms")
        assert "No open alarm." in page.inner_text("#open-alarms")
        assert "(defaults)" in page.inner_text("#alarm-policies")
        browser.close()
    assert errors == []
    assert (ARTIFACTS / "dashboard-overview.png").stat().st_size > 5000


def test_rollout_page_shows_waves_gates_and_charts_and_an_operator_pauses_it(
    chromium: str, sqlite_controller: Controller, bundles, signing_key, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import sync_playwright

    fleet = make_fleet(sqlite_controller, bundles, signing_key, tmp_path, devices=10)
    rid = fleet.create(
        waves=[{"percent": 30}, {"percent": 100}], shadow_s=30, gates={"max_latency_ratio": 2.0}
    )["id"]
    wave = sorted(fleet.devices, key=lambda d: position(rid, d))[:3]
    fleet.report(wave[:2], OtaState.PROMOTED, rid, shadow=shadow(0.97, 1.0, 1.3))
    fleet.report(wave[2:], OtaState.SHADOW, rid, shadow=shadow(0.93, 1.0, 1.1))

    ARTIFACTS.mkdir(exist_ok=True)
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=FLAGS)
        for role in ("viewer", "operator"):
            page = browser.new_context().new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{sqlite_controller.url}/login")
            page.fill("input[name=token]", sqlite_controller.tokens[role])
            page.click("button[type=submit]")
            page.wait_for_selector("#devices")
            page.click("nav >> text=Rollouts")
            page.wait_for_selector("#rollouts")
            listed = page.inner_text("#rollouts")
            assert "running" in listed and "sensor-mlp@2.0.0" in listed
            page.click(f"text={rid}")
            page.wait_for_selector("#waves")
            assert page.inner_text("#rollout-state") == "running"
            first = page.inner_text("#waves tr:nth-child(2)").split()
            assert first[:3] == ["0", "3", "3"], "wave 0: target 3, 3 devices"
            gates = page.inner_text("#gates")
            assert "66.7 %" not in gates and "67 %" in gates and ">= 90 % to advance" in gates
            assert "1.23x" in gates and "<= 2.00x" in gates, "mean of 1.3, 1.3, 1.1 against its limit"
            charts = page.locator(".rollout-chart")
            assert charts.count() == 3
            # min installed and max failed, min agreement, max latency ratio
            assert page.locator(".rollout-chart .threshold").count() == 4
            assert "time (UTC)" in (charts.first.text_content() or "")
            assert page.locator(".rollout-chart .dot").count() >= 3
            if role == "viewer":
                assert page.locator("#rollout-actions").count() == 0, "viewers get no buttons"
                page.screenshot(path=str(ARTIFACTS / "dashboard-rollout.png"), full_page=True)
                continue
            page.click("#rollout-actions >> text=Pause")
            page.wait_for_selector("#rollout-state.state-paused")
            assert page.locator("#rollout-actions >> text=Resume").count() == 1
            assert page.inner_text("#decisions tr:last-child td:nth-child(3)") == "pause"
            page.screenshot(path=str(ARTIFACTS / "dashboard-rollout-paused.png"), full_page=True)
        browser.close()
    assert errors == []
    assert fleet.status(rid)["state"] == "paused"
