"""Over-the-air updates end to end: real Mosquitto, controller, gateways and 50 agents on two sites.

One fleet (fleet_configs/ota.yaml) and one run, read by every test: a good version rolled out in
waves while one site's agent process is killed -9 at three points of its update and the other
site's uplink is cut, then each kind of defective version, which must stop at its canary. The
tests read what an operator reads: the run's report (report.json, report.html) and its exit code.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from simulators.events import kinds
from simulators.scenario import load_scenario

# solo: whole fleets judged on latency gates; run after the parallel part, alone on the machine.
pytestmark = [pytest.mark.slow, pytest.mark.solo]

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "fleet_configs" / "ota.yaml"
GOOD, PREVIOUS = "1.1.0", "1.0.0"
#: Each defect, its version in the scenario, and how every canary device must have ended it.
DEFECTS = {
    "nan_outputs": ("1.2.0", "rolled_back", {"smoke_test_failed"}),
    "slow_10x": ("1.3.0", "rolled_back", {"shadow_gate_failed"}),
    "disagrees": ("1.4.0", "rolled_back", {"shadow_gate_failed"}),
    # Planted in the gateways' caches: the bytes do not hash to the address the desired state names.
    "tampered_signature": ("1.5.0", "refused", {"digest_mismatch", "signature_invalid", "manifest_mismatch"}),
}


@pytest.fixture(scope="module")
def ota_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("ota-run")
    result = subprocess.run(
        [sys.executable, "-m", "simulators.cli", "run", str(SCENARIO), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
        check=False,
    )
    return result, out


@pytest.fixture(scope="module")
def report(ota_run: tuple[subprocess.CompletedProcess[str], Path]) -> dict[str, Any]:
    result, out = ota_run
    assert (out / "report.json").exists(), result.stdout[-4000:] + result.stderr[-4000:]
    return json.loads((out / "report.json").read_text())


def _rollout(report: dict[str, Any], version: str) -> dict[str, Any]:
    return next(r for r in report["rollouts"] if r["version"] == version)


def _event(report: dict[str, Any], kind: str, containing: str = "") -> str:
    return next(line for line in report["events"] if f" {kind}: " in line and containing in line)


def test_the_run_holds_every_invariant_of_records_and_updates(ota_run, report) -> None:  # type: ignore[no-untyped-def]
    result, _ = ota_run
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert report["invariants"] == {
        "no_acknowledged_record_lost": True,
        "no_record_stored_twice": True,
        "every_device_on_its_desired_model_or_says_why": True,
        "no_daemon_crashed": True,
        "every_rollout_ended_as_expected_devices_back_with_a_reason": True,
        "no_device_loaded_an_unverified_bundle": True,
        "every_record_attributed_to_the_model_version_that_made_it": True,
        "each_site_downloaded_each_bundle_once": True,
    }, report["ota"]["problems"]
    assert report["devices"] == 50 and report["sites"] == 2
    assert {e.kind for e in load_scenario(SCENARIO).events} >= {"rollout", "bad_rollout", "agents_kill"}
    assert "was never retrieved" not in result.stderr


def test_a_good_version_goes_through_every_wave_to_every_device(report) -> None:  # type: ignore[no-untyped-def]
    good = _rollout(report, GOOD)
    assert good["state"] == "succeeded" and good["previous"] == PREVIOUS
    assert [w["started_at"] is not None for w in good["waves"]] == [True, True, True]
    assert [w["target"] for w in good["waves"]] == [10, 25, 50], "20, 50 and 100 % of 50 devices"
    actions = [d["action"] for d in good["decisions"]]
    assert actions.count("advance") == 2 and actions[-1] == "complete", actions
    assert report["final_model_version"] == GOOD
    sent = report["ota"]["devices_by_version"][GOOD]
    assert len(sent) == 50 and {d["runs"] for d in sent.values()} == {GOOD}
    assert {d["outcome"] for d in sent.values()} == {"promoted"}


@pytest.mark.parametrize("defect", DEFECTS)
def test_a_defective_version_stops_at_its_canary_and_every_canary_device_is_back(report, defect) -> None:  # type: ignore[no-untyped-def]
    version, outcome, reasons = DEFECTS[defect]
    bad = _rollout(report, version)
    assert bad["defect"] == defect and bad["state"] == "failed", bad
    assert bad["previous"] == GOOD
    assert [w["started_at"] is not None for w in bad["waves"]] == [True, False], "stopped at the canary"
    assert bad["decisions"][-1]["values"], "the decision keeps the numbers that made it"
    canary = report["ota"]["devices_by_version"][version]
    assert 1 <= len(canary) <= bad["waves"][0]["target"], "only the canary was sent it"
    for device, ended in canary.items():
        assert ended["runs"] == GOOD, f"{device} is not back on {GOOD}: {ended}"
        # Its own checks caught the defect, or the controller's gates aborted first and the
        # device stopped its update there (never "shadow" or "downloading" for good). A gate a
        # device judges by statistics over its few shadow readings (latency, agreement) may pass
        # where the canary's gates do not: the abort then brings the device back (checked above).
        caught = ended["outcome"] == outcome and ended["reason"] in reasons
        statistical = defect in ("slow_10x", "disagrees") and ended["outcome"] == "promoted"
        assert caught or statistical or ended["outcome"] == "cancelled", f"{device}: {ended}"


def test_a_tampered_bundle_is_refused_by_every_device_and_never_fetched_by_a_site(report) -> None:  # type: ignore[no-untyped-def]
    version = DEFECTS["tampered_signature"][0]
    assert report["invariants"]["no_device_loaded_an_unverified_bundle"] is True
    assert "planted in the bundle caches of site-0, site-1" in _event(report, "bad_rollout", version)
    sent = report["ota"]["devices_by_version"][version]
    refused = [d for d, ended in sent.items() if ended["outcome"] == "refused"]
    # The rollout stops once more than 20 % of its canary refused: a device still downloading then
    # has its update cancelled before the check; none got further.
    assert len(refused) / _rollout(report, version)["waves"][0]["target"] > 0.2, sent
    assert all(d["outcome"] in ("refused", "cancelled") for d in sent.values()), sent
    for site, figures in report["ota"]["bundle_downloads_per_site"].items():
        assert figures["planted"] >= 1, site
        assert figures["downloads"] == figures["bundles"], f"{site}: each bundle once, planted ones never"


def test_kill_9_at_download_unpack_and_switch_leaves_a_runnable_model_that_finishes_the_update(
    report,
) -> None:  # type: ignore[no-untyped-def]
    line = _event(report, "agents_kill")
    for point in ("download", "unpack", "switch"):
        assert re.search(rf"killed at {point}, 25 devices back", line), line
    site0 = {d: v for d, v in report["ota"]["devices_by_version"][GOOD].items() if d.startswith("site-0")}
    assert len(site0) == 25 and {v["runs"] for v in site0.values()} == {GOOD}
    assert report["records_lost"] == report["records_counted_twice"] == 0
    assert report["crashed"] == []


def test_a_site_partitioned_during_the_rollout_converges_after_it_heals(report) -> None:  # type: ignore[no-untyped-def]
    assert "site-1 uplink cut for 12s" in _event(report, "uplink_partition")
    good = _rollout(report, GOOD)
    site1 = {d: v for d, v in report["ota"]["devices_by_version"][GOOD].items() if d.startswith("site-1")}
    assert len(site1) == 25 and {v["runs"] for v in site1.values()} == {GOOD}
    assert good["seconds"] > 0
    assert report["ota"]["bundle_downloads_per_site"]["site-1"]["downloads"] >= 1


def test_the_html_report_charts_each_devices_model_version_over_time_with_the_waves_marked(ota_run) -> None:  # type: ignore[no-untyped-def]
    _, out = ota_run
    page = (out / "report.html").read_text()
    assert "Model version of each device&#x27;s records over time" in page
    assert page.count('class="strip"') >= 100, "50 devices, at least two versions each"
    assert page.count('class="wave"') >= 3 + 4 + 5, "3 + 4 waves started, 5 rollout ends"
    assert "1.1.0 w3" in page and "1.2.0 failed" in page
    assert "<h2>Rollouts</h2>" in page


def test_the_ota_scenario_covers_every_kind_of_update_event() -> None:
    ota_kinds = {"rollout", "bad_rollout", "agents_kill"}
    assert ota_kinds <= set(kinds())
    assert {e.kind for e in load_scenario(SCENARIO).events} >= ota_kinds
    defects = {getattr(e, "defect", None) for e in load_scenario(SCENARIO).events} - {None}
    assert defects == set(DEFECTS)
