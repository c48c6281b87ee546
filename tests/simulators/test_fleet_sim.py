"""fleet-sim end to end on ci.yaml: real agents, real Mosquitto per site, broker faults, invariants."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_fleet_sim_ci_scenario_holds_every_invariant(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "simulators.cli",
            "run",
            str(root / "fleet_configs" / "ci.yaml"),
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=root,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["devices"] == 10
    assert report["invariants"] == {"no_record_lost": True, "no_seq_reused": True, "no_daemon_crashed": True}
    assert report["records_delivered_unique"] == report["records_produced"] > 400
    assert len(report["faults"]) == 2
    assert report["device_model_accuracy"] > 0.9
    assert report["rejected_payloads"] == 0
    assert "PASS no record lost" in result.stdout


def test_fleet_sim_refuses_an_invalid_scenario(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("sites: 0\nfaults: [{at_s: 1, kind: meteor}]\n")
    result = subprocess.run(
        [sys.executable, "-m", "simulators.cli", "run", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "sites: Input should be greater than or equal to 1" in result.stdout
    assert "faults.0.kind" in result.stdout
