"""`edge-agent install` into a throwaway root, and the systemd units it writes (deploy/systemd/)."""

from __future__ import annotations

import configparser
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.install import DEFAULT_PREFIX, SERVICES, render_sysusers, render_unit

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "deploy" / "systemd"
VENV = Path(sys.prefix)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV / "bin" / "edge-agent"), *args], capture_output=True, text=True, timeout=60, check=False
    )


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _unit(text: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return parser


def test_install_help_explains_what_it_writes() -> None:
    result = _cli("install", "--help")
    assert result.returncode == 0
    for text in (
        "/etc/systemd/system/edge-agent.service",
        "/etc/edgefleet/",
        "state dirs",
        "--root",
        "--dry-run",
    ):
        assert text in result.stdout, text
    assert "install" in _cli("--help").stdout


def test_install_writes_units_user_config_and_state_dirs_under_root(tmp_path: Path) -> None:
    result = _cli("install", "--root", str(tmp_path), "--service", "agent", "--service", "gateway")
    assert result.returncode == 0, result.stderr
    unit = tmp_path / "etc/systemd/system/edge-agent.service"
    expected = {
        unit: 0o644,
        tmp_path / "etc/systemd/system/edge-gateway.service": 0o644,
        tmp_path / "etc/sysusers.d/edgefleet.conf": 0o644,
        tmp_path / "etc/edgefleet": 0o755,
        tmp_path / "var/lib/edgefleet/agent": 0o750,
        tmp_path / "var/lib/edgefleet/models": 0o750,
        tmp_path / "var/lib/edgefleet/gateway": 0o750,
    }
    for path, mode in expected.items():
        assert _mode(path) == mode, path
    # No config file is written: the operator's own stay untouched.
    assert list((tmp_path / "etc/edgefleet").iterdir()) == []
    service = _unit(unit.read_text())["Service"]
    assert service["ExecStart"] == f"{VENV}/bin/edge-agent run --config /etc/edgefleet/agent.yaml"
    assert "next: put agent.yaml, gateway.yaml" in result.stdout
    assert "systemctl enable --now edge-agent.service edge-gateway.service" in result.stdout


def test_install_again_keeps_config_files(tmp_path: Path) -> None:
    assert _cli("install", "--root", str(tmp_path)).returncode == 0
    config = tmp_path / "etc/edgefleet/agent.yaml"
    config.write_text("device_id: dev-1\n")
    assert _cli("install", "--root", str(tmp_path)).returncode == 0
    assert config.read_text() == "device_id: dev-1\n"
    assert not (tmp_path / "etc/systemd/system/edge-gateway.service").exists()


def test_install_dry_run_writes_nothing(tmp_path: Path) -> None:
    result = _cli("install", "--root", str(tmp_path / "target"), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "target").exists()
    assert f"would write file 644 {tmp_path}/target/etc/systemd/system/edge-agent.service" in result.stdout
    assert "ProtectSystem=strict" in result.stdout  # the unit itself is shown


def test_install_refuses_a_prefix_without_the_agent(tmp_path: Path) -> None:
    result = _cli("install", "--dry-run", "--prefix", str(tmp_path))
    assert result.returncode == 1
    assert f"no edge-agent at {tmp_path}/bin/edge-agent: give --prefix" in result.stderr


def test_install_refuses_a_root_it_cannot_write(tmp_path: Path) -> None:
    root = tmp_path / "a-file"
    root.write_text("")
    result = _cli("install", "--root", str(root))
    assert result.returncode == 1
    assert f"cannot write {root}/etc/edgefleet: Not a directory; run as root, or give --root" in result.stderr


def test_shipped_units_are_what_install_writes() -> None:
    for service in SERVICES.values():
        assert (SYSTEMD / service.unit).read_text() == render_unit(service, DEFAULT_PREFIX), service.unit
    assert (SYSTEMD / "sysusers.d" / "edgefleet.conf").read_text() == render_sysusers()


@pytest.mark.parametrize("name", ["edge-agent.service", "edge-gateway.service"])
def test_units_are_hardened_and_claim_no_watchdog(name: str) -> None:
    service = _unit((SYSTEMD / name).read_text())["Service"]
    assert service["User"] == "edgefleet"
    assert service["ProtectSystem"] == "strict" and service["NoNewPrivileges"] == "yes"
    assert service["Restart"] == "on-failure"
    assert service["StateDirectory"].startswith("edgefleet/")
    assert service["CapabilityBoundingSet"] == ""
    # The daemons do not call sd_notify: a watchdog or Type=notify would kill or hang them.
    assert service["Type"] == "exec" and "WatchdogSec" not in service
    daemon_sources = [*(ROOT / "edge_agent").rglob("*.py"), *(ROOT / "edge_gateway").rglob("*.py")]
    assert not [
        p for p in daemon_sources if "NOTIFY_SOCKET" in p.read_text() or "sd_notify(" in p.read_text()
    ]


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here")
    # Installed with this venv as the prefix: verify checks that ExecStart's binary exists.
    assert (
        _cli("install", "--root", str(tmp_path), "--service", "agent", "--service", "gateway").returncode == 0
    )
    units = sorted((tmp_path / "etc/systemd/system").glob("*.service"))
    assert len(units) == 2
    result = subprocess.run(
        [analyze, "verify", *map(str, units)], capture_output=True, text=True, timeout=60, check=False
    )
    # verify exits 0 on a misspelt key or value (it only warns): any line about our units fails.
    assert result.returncode == 0, result.stderr
    assert not [line for line in result.stderr.splitlines() if "edge-" in line], result.stderr
