"""The edge image's promise, kept without Docker: its builder stage, run here in a fresh venv.

The stage's own instructions are executed (tests/deploy/dockerfile.py), so this venv holds what
Dockerfile.edge installs, by the same commands. Then a site runs from it as the image would run it:
the gateway with the Mosquitto it manages, an agent publishing to it, each probed by the image's
HEALTHCHECK command; and the venv is shown to hold no torch and no cloud code.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.deploy.dockerfile import apply_env, healthcheck_command, host_environment, parse, run_stage
from tests.utils.broker import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile.edge"
CLOUD_MODULES = ("cloud_controller", "model_compiler", "simulators", "fleet_learning")
TRAINING_STACK = ("torch", "nncf", "flwr", "fastapi", "sqlmodel")
TEST_TOOLS = ("pytest", "ruff", "hypothesis", "schemathesis")


@pytest.fixture(scope="module")
def edge_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The builder stage of Dockerfile.edge run here; its venv (about 30 s, from the local index)."""
    root = tmp_path_factory.mktemp("edge-image")
    builder, _ = parse(DOCKERFILE)
    venv = root / "venv"
    # The image's `python` is the base image's interpreter: here, the one this suite runs on.
    shim = root / "shim"
    shim.mkdir()
    (shim / "python").symlink_to(Path(sys._base_executable).resolve())
    env = host_environment()
    env["PATH"] = f"{shim}:{env.get('PATH', '/usr/bin:/bin')}"
    run_stage(builder, context=ROOT, workdir=root / "fs", env=env, overrides={"VENV": str(venv)})
    return venv


def _runtime_env(venv: Path, **overrides: str) -> dict[str, str]:
    """The final stage's ENV, as the container gets it, with the venv's path and the given values."""
    _, runtime = parse(DOCKERFILE)
    base = host_environment()
    return apply_env(runtime, base, {"PATH": f"{venv / 'bin'}:{base.get('PATH', '')}", **overrides})


def _python(venv: Path, code: str) -> subprocess.CompletedProcess[str]:
    # Not from the checkout: `python -c` puts its working directory on sys.path.
    return subprocess.run(
        [str(venv / "bin" / "python"), "-c", code],
        cwd=venv.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_edge_venv_has_no_torch_no_cloud_code_and_no_test_tools(edge_venv: Path) -> None:
    for module in (*TRAINING_STACK, *CLOUD_MODULES, *TEST_TOOLS):
        result = _python(edge_venv, f"import {module}")
        assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr, module
    imported = _python(edge_venv, "import edge_agent.agent, edge_gateway.gateway, onnxruntime, openvino")
    assert imported.returncode == 0, imported.stderr


def test_every_command_left_in_the_edge_venv_runs(edge_venv: Path) -> None:
    for command in ("edge-agent", "edge-gateway"):
        result = subprocess.run(
            [str(edge_venv / "bin" / command), "--help"],
            cwd=edge_venv.parent,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert "COMMAND" in result.stdout
    # A launcher of the project whose code is not in the venv would only fail when someone runs it.
    scripts = _python(
        edge_venv,
        "from importlib.metadata import entry_points\n"
        "for ep in entry_points(group='console_scripts'):\n"
        "    if ep.dist.name == 'edgefleet': print(ep.name, ep.value)",
    )
    assert scripts.returncode == 0, scripts.stderr
    for line in scripts.stdout.splitlines():
        name, target = line.split()
        if (edge_venv / "bin" / name).exists():
            loaded = _python(edge_venv, f"import {target.partition(':')[0]}")
            assert loaded.returncode == 0, f"{name}: {loaded.stderr}"
        else:
            assert target.partition(".")[0] in CLOUD_MODULES, name
    assert not (edge_venv / "bin" / "cloud-controller").exists()
    # The systemd installer ships with the agent: a device installed from this set can run it.
    target = edge_venv.parent / "target"
    installed = subprocess.run(
        [str(edge_venv / "bin" / "edge-agent"), "install", "--root", str(target)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert installed.returncode == 0, installed.stderr
    unit = (target / "etc/systemd/system/edge-agent.service").read_text()
    assert f"ExecStart={edge_venv}/bin/edge-agent run" in unit


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def _healthy(command: list[str], env: dict[str, str], cwd: Path) -> bool:
    run = subprocess.run(command, env=env, cwd=cwd, capture_output=True, timeout=10, check=False)
    return run.returncode == 0


def _wait(what: str, check, process: subprocess.Popen[str], within: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while not check():
        if process.poll() is not None:
            raise AssertionError(f"{what}: the process exited with {process.returncode}: {process.stdout}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within} s")
        time.sleep(0.2)


def _metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url, timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


def test_a_site_runs_from_the_edge_venv_and_passes_the_image_healthcheck(
    edge_venv: Path,
    tmp_path: Path,
    bundles: dict[str, Path],
    public_key_file: Path,
    processes: list[subprocess.Popen[str]],
) -> None:
    if not (shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists()):
        pytest.skip("mosquitto is not installed: the gateway's managed broker cannot start")
    _, runtime = parse(DOCKERFILE)
    healthcheck = healthcheck_command(runtime)
    broker_port, http_port, metrics_port = free_port(), free_port(), free_port()
    gateway_yaml = tmp_path / "gateway.yaml"
    gateway_yaml.write_text(
        yaml.safe_dump(
            {
                "gateway_id": "gw-a",
                "site": "site-a",
                "data_dir": str(tmp_path / "gateway"),
                "broker": {"port": broker_port, "listen": "127.0.0.1"},
                "http": {"host": "127.0.0.1", "port": http_port},
            }
        )
    )
    agent_yaml = tmp_path / "agent.yaml"
    agent_yaml.write_text(
        yaml.safe_dump(
            {
                "device_id": "dev-1",
                "site": "site-a",
                "data_dir": str(tmp_path / "agent"),
                "model_dir": str(bundles["onnx-fp32"]),
                "trusted_keys": [str(public_key_file)],
                "source": {"kind": "synthetic", "rate_hz": 50, "seed": 1},
                "mqtt": {"host": "127.0.0.1", "port": broker_port, "reconnect_min_s": 0.1},
            }
        )
    )
    gateway_env = _runtime_env(edge_venv, EDGEFLEET_HEALTH_URL=f"http://127.0.0.1:{http_port}/healthz")
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    # The port the image turns on for its HEALTHCHECK, moved to a free one as its comment says.
    agent_env = _runtime_env(
        edge_venv, EDGEFLEET_AGENT__METRICS__PORT=str(metrics_port), EDGEFLEET_HEALTH_URL=metrics_url
    )

    checked = subprocess.run(
        ["edge-agent", "check-config", "--config", str(agent_yaml)],
        env=agent_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith("ok: device dev-1 at site site-a")
    gateway = subprocess.Popen(
        ["edge-gateway", "run", "--config", str(gateway_yaml)],
        env=gateway_env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    processes.append(gateway)
    _wait("the gateway's healthcheck", lambda: _healthy(healthcheck, gateway_env, tmp_path), gateway)
    agent = subprocess.Popen(
        ["edge-agent", "run", "--config", str(agent_yaml)],
        env=agent_env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    processes.insert(0, agent)
    _wait("the agent's healthcheck", lambda: _healthy(healthcheck, agent_env, tmp_path), agent)
    _wait("records acknowledged", lambda: _metric(metrics_url, "edge_agent_records_acked_total") > 0, agent)
    gateway_metrics = f"http://127.0.0.1:{http_port}/metrics"
    _wait("records stored", lambda: _metric(gateway_metrics, "edge_gateway_records_total") > 0, gateway)

    for process in (agent, gateway):
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
        assert process.returncode == 0, output
