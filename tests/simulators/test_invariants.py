"""The run's invariants on real data: records compared as (device_id, seq), model reasons from a closed list.

The ledger is read from a real controller process that ingested what a gateway would send.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from cloud_controller.models import Device
from fleet_protocol import Health, ModelReason, ReportedState
from fleet_protocol.ingest import IngestBatch, WindowSummary
from simulators.controller import ControllerProcess
from simulators.fleet_view import FleetView
from simulators.ledger import Ledger
from simulators.report import print_report
from simulators.result import EXIT_FELL_BEHIND, EXIT_INVARIANT_FAILED, EXIT_OK, RunResult, off_model
from simulators.scenario import Scenario

DEVICE = "site-a-dev-0001"


@pytest.fixture(scope="module")
def controller(
    tmp_path_factory: pytest.TempPathFactory, public_key_file: Path
) -> Iterator[ControllerProcess]:
    """One controller for the module: each test has a device of its own."""
    process = ControllerProcess(tmp_path_factory.mktemp("controller"), public_key_file)
    process.start()
    try:
        yield process
    finally:
        process.stop()


def _summary(device: str, window_start: float, ranges: list[tuple[int, int]]) -> WindowSummary:
    return WindowSummary(
        device_id=device,
        model_id="sensor-mlp",
        model_version="1.0.0",
        window_start=window_start,
        window_end=window_start + 10,
        first_seq=ranges[0][0],
        last_seq=ranges[-1][1],
        count=sum(high - low + 1 for low, high in ranges),
        seq_ranges=ranges,
    )


def _ingest(controller: ControllerProcess, summaries: list[WindowSummary]) -> None:
    batch = IngestBatch(site="site-a", gateway_id="gw-a", batch_id=uuid.uuid4().hex, summaries=summaries)
    token = controller.gateway_token("site-a")
    with controller.client("operator") as client:
        client.headers["Authorization"] = f"Bearer {token}"
        response = client.post("/api/v1/ingest", content=batch.model_dump_json())
    assert response.status_code == 200, response.text


def _ledger_of(controller: ControllerProcess, device: str) -> Ledger:
    """What the controller counted for ``device`` (the module's tests share the controller)."""
    ledger = controller.ledger()
    whole = {record for record in ledger.whole if record[0] == device}
    return Ledger(counted={device: ledger.counted.get(device, Counter())}, whole=whole)


def _result(device: str, delivered: set[int], produced: int) -> RunResult:
    view = FleetView()
    view.seqs[device] = delivered
    result = RunResult(Scenario(), Path("unused"), 0.0, view=view, view_complete=True, drained=True)
    result.produced = {device: produced}
    return result


def test_one_record_lost_and_another_counted_twice_on_one_device_fail_both_invariants(
    controller: ControllerProcess,
) -> None:
    # Seqs 1-5 delivered; the summaries count 1-3 and 3, 5: five counts, the right number.
    device = "site-a-dev-lost"
    _ingest(controller, [_summary(device, 0.0, [(1, 3)]), _summary(device, 10.0, [(3, 3), (5, 5)])])

    result = _result(device, {1, 2, 3, 4, 5}, produced=5)
    result.ledger = _ledger_of(controller, device)
    result.settle()

    assert sum(result.ledger.counted[device].values()) == 5, "a comparison of counts would pass"
    assert result.books.lost == [(device, 4)]
    assert result.books.doubled == [(device, 3)]
    assert result.invariants()["no_acknowledged_record_lost"] is False
    assert result.invariants()["no_record_stored_twice"] is False
    summary = result.summary()
    assert (summary["records_lost"], summary["records_lost_examples"]) == (1, [f"{device}#4"])
    twice = (summary["records_counted_twice"], summary["records_counted_twice_examples"])
    assert twice == (1, [f"{device}#3"])
    assert result.exit_code() == EXIT_INVARIANT_FAILED


def test_every_delivered_record_counted_once_passes(controller: ControllerProcess) -> None:
    device = "site-a-dev-clean"
    _ingest(controller, [_summary(device, 0.0, [(1, 3)]), _summary(device, 10.0, [(4, 5)])])

    result = _result(device, {1, 2, 3, 4, 5}, produced=5)
    result.ledger = _ledger_of(controller, device)
    result.settle()

    assert result.books.lost == result.books.doubled == []
    assert result.invariants()["no_acknowledged_record_lost"] is True
    assert result.exit_code() == EXIT_OK


def test_an_incomplete_view_is_not_judged_instead_of_reporting_losses(controller: ControllerProcess) -> None:
    # The observer read only 1-2 of the 5 records the controller counted: no verdict on losses.
    device = "site-a-dev-unread"
    _ingest(controller, [_summary(device, 0.0, [(1, 5)])])
    result = _result(device, {1, 2}, produced=5)
    result.view_complete = False
    result.lag = {"behind": True, "message": "the observer had not read all the brokers accepted"}
    result.ledger = _ledger_of(controller, device)
    result.settle()

    assert result.invariants()["no_acknowledged_record_lost"] is None
    assert result.invariants()["no_record_stored_twice"] is None
    assert result.exit_code() == EXIT_FELL_BEHIND
    # The figures read from that view say they are partial, in report.json and on the terminal.
    summary = result.summary()
    assert "upstream_bytes_ratio" in summary["figures_from_partial_view"]
    assert "device_model_accuracy" in summary["figures_from_partial_view"]
    console = Console(record=True, width=200)
    print_report(result, console)
    assert "upstream bytes ratio (partial view)" in console.export_text()


def _state(reason: ModelReason | None, text: str | None = None) -> ReportedState:
    return ReportedState(
        device_id=DEVICE,
        site="site-a",
        online=True,
        health=Health.OK,
        model_id="sensor-mlp",
        model_version="0.9.0",
        reason=text,
        model_reason=reason,
    )


def _device(version: str, model_reason: str | None = None) -> Device:
    return Device(
        id=DEVICE, site_id="site-a", model_id="sensor-mlp", model_version=version, model_reason=model_reason
    )


@pytest.mark.parametrize(
    ("reason", "text", "off"),
    [
        (None, "I will update later, promise", True),
        (ModelReason.UPDATE_PENDING, None, True),
        (ModelReason.OTA_UNSUPPORTED, None, False),
        (ModelReason.SIGNATURE_INVALID, "manifest.sig does not verify", False),
    ],
)
def test_a_device_off_its_model_passes_only_with_a_final_reason_from_the_closed_list(
    reason: ModelReason | None, text: str | None, off: bool
) -> None:
    model = ("sensor-mlp", "1.0.0")
    from_device = off_model([DEVICE], {DEVICE: _device("0.9.0")}, {DEVICE: _state(reason, text)}, model)
    from_controller = off_model([DEVICE], {DEVICE: _device("0.9.0", reason)}, {}, model)
    assert from_device == from_controller == ([DEVICE] if off else [], [])


def test_a_device_the_controller_never_heard_of_fails_on_a_complete_view() -> None:
    model = ("sensor-mlp", "1.0.0")
    assert off_model([DEVICE], {DEVICE: _device("1.0.0")}, {}, model) == ([], [])
    assert off_model(["site-a-dev-0002"], {}, {}, model) == ([], ["site-a-dev-0002"])
    result = _result(DEVICE, set(), produced=0)
    result.devices_unknown = ["site-a-dev-0002"]

    assert result.invariants()["every_device_on_its_desired_model_or_says_why"] is False


def test_a_device_the_controller_never_heard_of_is_not_judged_when_the_view_is_incomplete() -> None:
    result = _result(DEVICE, set(), produced=0)
    result.view_complete = False
    result.devices_unknown = ["site-a-dev-0002"]

    assert result.invariants()["every_device_on_its_desired_model_or_says_why"] is None
    assert result.exit_code() == EXIT_FELL_BEHIND
    result.devices_off_model = [DEVICE]  # a device the controller knows, off its model: a FAIL still
    assert result.invariants()["every_device_on_its_desired_model_or_says_why"] is False


def test_records_still_in_transit_when_the_drain_times_out_are_not_judged_lost(
    controller: ControllerProcess,
) -> None:
    # Seqs 1-5 delivered, 1-3 counted; the gateway still held the rest when the drain timed out.
    device = "site-a-dev-transit"
    _ingest(controller, [_summary(device, 0.0, [(1, 3)])])
    result = _result(device, {1, 2, 3, 4, 5}, produced=5)
    result.drained = False
    result.ledger = _ledger_of(controller, device)
    result.settle()
    assert result.invariants()["no_acknowledged_record_lost"] is False, "no evidence: a loss"

    result.in_transit = "site-a: 2 items in the gateway's upstream queue"

    assert result.invariants()["no_acknowledged_record_lost"] is None
    assert result.exit_code() == EXIT_FELL_BEHIND
