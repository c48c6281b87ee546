"""fleet-sim end to end on ci.yaml: controller, gateways, brokers, agents, every kind of event, invariants."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from simulators.events import kinds
from simulators.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[2]
# solo: the tests that run whole fleets on a timeline; after the parallel part, alone on the machine.
solo = pytest.mark.solo
# `ci_run`, the run of fleet_configs/ci.yaml, is tests/conftest.py's: tests/security reads its logs too.


@pytest.mark.slow
@solo
def test_fleet_sim_ci_scenario_holds_every_invariant_under_every_kind_of_event(ci_run) -> None:  # type: ignore[no-untyped-def]
    result, out = ci_run
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    report = json.loads((out / "report.json").read_text())
    assert all(v is True for v in report["invariants"].values()), report["invariants"]
    assert set(report["invariants"]) == {
        "no_acknowledged_record_lost",
        "no_record_stored_twice",
        "every_device_on_its_desired_model_or_says_why",
        "no_daemon_crashed",
    }
    scenario = load_scenario(ROOT / "fleet_configs" / "ci.yaml")
    # Rollouts and agents killed mid-update are tests/ota's (fleet_configs/ota.yaml): they take minutes;
    # jobs are test_learning_loop's (fleet_configs/learning.yaml).
    ota = {"rollout", "bad_rollout", "agents_kill", "job"}
    assert {e.kind for e in scenario.events} == set(kinds()) - ota, "ci.yaml exercises every other kind"
    assert len(report["events"]) == len(scenario.events)
    assert not any("failed" in line for line in report["events"])
    assert report["devices"] == 11, "10 devices and one that joined"
    assert report["devices_by_class"] == {"press": 6, "pump": 4, "new": 1}
    assert (
        report["records_counted_at_controller"]
        == report["records_delivered_unique"]
        == report["records_produced"]
    )
    assert report["records_produced"] > 1000
    assert report["records_lost"] == report["records_counted_twice"] == 0
    assert report["observer_view_complete"] and report["drained"]
    assert report["anomalies_delivered"] > 0 and report["anomalies_missing_at_controller"] == 0
    # Measured 0.069 (5% anomalies sent whole, 5 s windows): a regression to 1.5 times that fails.
    assert report["upstream_bytes_ratio"] < 0.1, "the gateways send summaries, not every record"
    assert report["training_accuracy"] > 0.95
    assert report["accuracy_after_drift"] < report["accuracy_before_drift"], (
        "the injected drift hurts the model"
    )
    assert max(d["score"] for d in report["drift_scores"] if d["method"] == "psi") > 0.25
    assert "PASS no acknowledged record lost" in result.stdout
    lag = report["simulator"]
    assert lag["behind"] is False and lag["message"] is None, lag
    assert lag["event_lateness_max_s"] < lag["lag_limit_s"] and lag["loop_delay_max_s"] < lag["lag_limit_s"]
    assert "SIMULATOR FELL BEHIND" not in result.stdout
    assert "event loop delay, p95 / max (s)" in result.stdout
    assert "was never retrieved" not in result.stderr, result.stderr[-4000:]


@pytest.mark.slow
@solo
def test_fleet_sim_html_report_renders_with_its_plots(ci_run) -> None:  # type: ignore[no-untyped-def]
    _, out = ci_run
    page = (out / "report.html").read_text()
    captions = re.findall(r"<figcaption>([^<]+)</figcaption>", page)
    assert captions[:4] == [
        "Throughput (records/s)",
        "Devices online",
        "Model versions in the fleet (online devices)",
        "Gateways&#x27; upstream queues (items) and uplink (KB/s)",
    ]
    assert any(c.startswith("Drift score") for c in captions)
    assert "The simulator&#x27;s own lag (s; limit 2.0)" in captions
    assert 'class="behind"' not in page
    assert "Device model accuracy before and after drift" in captions
    assert page.count('class="bar"') == 4
    assert page.count("<polyline") >= 6 and "no data" not in page
    assert page.count('class="event"') >= 8, "events are marked on the time charts"
    assert page.count('class="pass"') == 4
    assert "sensor-mlp@1.0.0" in page


def _run_scenario_text(
    tmp_path: Path, text: str, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(text)
    return subprocess.run(
        [sys.executable, "-m", "simulators.cli", "run", str(scenario), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


#: Two devices asked for 200,000 readings a second each: no machine of ours makes that. The drain
#: is too short for the gateway's 10 s windows, so records are still on their way when it ends.
_IMPOSSIBLE = """
name: overloaded
sites: 1
devices_per_site: 2
duration_s: 5
rate_hz: 200000
drain_timeout_s: 3
events: [{at_s: 2, kind: drift, site: 0, shift: 1.0}]
"""


@pytest.mark.slow
@solo
def test_a_simulator_that_falls_behind_says_so_and_exits_4_instead_of_failing(tmp_path: Path) -> None:
    result = _run_scenario_text(tmp_path, _IMPOSSIBLE, "--out", str(tmp_path / "run"), timeout=300)

    assert result.returncode == 4, result.stdout[-4000:] + result.stderr[-4000:]
    report_at = result.stdout.index("edgefleet run: overloaded")
    headline = result.stdout.index("SIMULATOR FELL BEHIND:")
    assert headline < report_at, "the report starts with it"
    said = " ".join(result.stdout[headline:report_at].split())
    assert "with 2 devices running" in said
    assert "sensors fell" in said and "behind their schedule" in said
    assert re.search(r"This machine held about \d devices? on schedule \(sensors made \d+% of", said), said
    assert "FAIL" not in result.stdout, "records still on their way are not called lost"
    assert "NOT JUDGED no acknowledged record lost" in result.stdout
    assert "was never retrieved" not in result.stderr, result.stderr[-4000:]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    lag = report["simulator"]
    assert lag["behind"] is True and lag["readings_behind_max_s"] > lag["lag_limit_s"]
    assert lag["fell_behind_with_devices"] == 2 and lag["largest_fleet_held"] < 2
    assert report["invariants"]["no_acknowledged_record_lost"] is None
    assert report["exit_code"] == 4
    assert 'class="behind"' in (tmp_path / "run" / "report.html").read_text()


#: Sixty busy devices (150 readings a second each) through two broker restarts and two kill -9s:
#: hundreds of publishes in flight when the connections drop.
_BUSY_THROUGH_RESTARTS = """
name: restarts
sites: 1
devices_per_site: 60
duration_s: 14
rate_hz: 150
drain_timeout_s: 3
events:
  - {at_s: 3, kind: broker_restart, site: 0, for_s: 1}
  - {at_s: 6, kind: broker_kill, site: 0, for_s: 1}
  - {at_s: 9, kind: broker_restart, site: 0, for_s: 1}
  - {at_s: 12, kind: broker_kill, site: 0, for_s: 1}
"""


@pytest.mark.slow
@solo
def test_a_busy_fleet_through_broker_restarts_leaves_no_unretrieved_exception(tmp_path: Path) -> None:
    result = _run_scenario_text(tmp_path, _BUSY_THROUGH_RESTARTS, "--out", str(tmp_path / "run"), timeout=300)

    assert result.returncode in (0, 1, 4), result.stderr[-4000:]
    assert result.stdout.count("broker down for 1s") == 4, "every restart and kill happened"
    unread = result.stderr.count("Future exception was never retrieved")
    assert unread == 0, f"{unread} unretrieved exceptions:\n{result.stderr[-3000:]}"


def test_run_help_documents_the_exit_codes() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "simulators.cli", "run", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    text = " ".join(result.stdout.split())
    assert "1 an invariant failed" in text
    assert "4 the simulator itself fell behind" in text
    for kind in kinds():
        assert f" {kind}: " in text, f"--help documents {kind}"
    assert "defect: nan_outputs, slow_10x, disagrees or tampered_signature" in text
    assert "at: Kill -9 at each of these in turn" in text


def test_fleet_sim_refuses_an_invalid_scenario(tmp_path: Path) -> None:
    result = _run_scenario_text(tmp_path, "sites: 0\nevents: [{at_s: 1, kind: meteor}]\n")
    assert result.returncode == 2
    assert "sites: Input should be greater than or equal to 1" in result.stdout
    assert "events.0.kind: unknown event kind 'meteor'" in result.stdout


def test_event_fields_are_checked_by_their_kind(tmp_path: Path) -> None:
    text = "events: [{at_s: 1, kind: uplink_slow, loss: 3}, {at_s: 2, kind: drift, colour: red}]\n"
    result = _run_scenario_text(tmp_path, text)
    assert result.returncode == 2
    assert "events.0 (uplink_slow): loss: Input should be less than or equal to 1" in result.stdout
    assert "events.1 (drift): colour: Extra inputs are not permitted" in result.stdout


def test_an_event_kind_cannot_be_registered_twice() -> None:
    from simulators.events import event

    with pytest.raises(ValueError, match="registered twice"):
        event("drift")(lambda run, spec: None)  # type: ignore[arg-type,return-value]


@pytest.mark.slow
@pytest.mark.parametrize(
    "settle_s",
    [
        # While the last site comes up (its gateway just spawned): a start cancelled midway must not
        # leave the processes it spawned (seen on a slow machine: that site's broker and gateway).
        pytest.param(0.0, id="while-the-last-site-starts"),
        pytest.param(3.0, id="once-the-sites-run"),
    ],
)
def test_ctrl_c_stops_every_process_of_the_run_cleanly(tmp_path: Path, settle_s: float) -> None:
    import signal
    import time

    # A relative run directory, as `make demo` has: every daemon must find its files from there.
    scenario = str(ROOT / "fleet_configs" / "ci.yaml")
    process = subprocess.Popen(
        [sys.executable, "-m", "simulators.cli", "run", scenario, "--out", "run"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    deadline = time.monotonic() + 120
    last_gateway = tmp_path / "run" / "site-1" / "gateway" / "gateway.log"
    # Wait until the last site's gateway has spawned.
    while not last_gateway.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    time.sleep(settle_s)
    children = [child.pid for child in psutil.Process(process.pid).children()]
    assert len(children) >= 5, "controller, brokers and gateways run as child processes"
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=90)
    assert process.returncode == 130, output[-3000:]
    assert "interrupted: everything was stopped cleanly" in output
    alive = [pid for pid in children if _running(pid)]
    assert not alive, f"left running: {alive}"
    # Spawned after the list above was taken, and orphaned: every daemon's files are in the run's folder.
    orphans = _running_with(str(tmp_path))
    assert not orphans, f"left running: {orphans}"


def _running_with(text: str) -> list[str]:
    """Command lines of the running processes (not zombies) that mention ``text``."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        command = " ".join(proc.info["cmdline"] or [])
        if proc.pid != os.getpid() and text in command and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(command)
    return found


def _running(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
