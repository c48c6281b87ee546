"""docs/deploy.md as a new user runs it: its ``sh`` blocks, in order, as written, on this machine.

The blocks run in one bash script (``set -euo pipefail``) in a temporary directory, with the names of
step 0 pointing at local ports and PATH starting with this venv. The daemons the doc starts with a
trailing ``&`` (controller, gateway and its Mosquitto, agent) stay in the script's process group, which
the test ends at teardown. Then it checks what a user checks: ``cloud-controller devices list --json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from simulators.brokers import free_port

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "deploy.md"
VENV_BIN = Path(sys.executable).parent
WALKTHROUGH_TIMEOUT_S = 240

pytestmark = pytest.mark.slow


def sh_blocks(markdown: str) -> list[str]:
    """The ``sh`` fenced blocks of a Markdown text, in order."""
    return re.findall(r"^```sh\n(.*?)^```$", markdown, flags=re.MULTILINE | re.DOTALL)


@pytest.fixture
def walkthrough(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], dict[str, str], Path]]:
    script = tmp_path / "walkthrough.sh"
    script.write_text("set -euo pipefail\n" + "\n".join(sh_blocks(DOC.read_text())))
    work = tmp_path / "machine"
    work.mkdir()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")},
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
        "CONTROLLER_HOST": "127.0.0.1",
        "CONTROLLER_PORT": str(free_port()),
        "GATEWAY_HOST": "127.0.0.1",
        "MQTT_PORT": str(free_port()),
        "GATEWAY_HTTP_PORT": str(free_port()),
        "SITE": "plant-test",
        "GATEWAY_ID": "gw-test-1",
        "DEVICE": "press-42",
    }
    log = (tmp_path / "walkthrough.log").open("wb")
    # Its own process group: the script's background daemons (and their children) are in it too.
    process = subprocess.Popen(
        ["bash", str(script)], cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        yield process, env, work
    finally:
        _end_group(process.pid)
        log.close()


def test_the_walkthrough_brings_a_device_to_stream_and_run_the_deployed_version(
    walkthrough: tuple[subprocess.Popen[bytes], dict[str, str], Path], tmp_path: Path
) -> None:
    process, env, work = walkthrough
    try:
        # A safety net, not a gate: two model builds and a dozen CLI starts took over 75 s on a
        # 2-core AMD EPYC beside two other test workers.
        returncode = process.wait(timeout=WALKTHROUGH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        logs = _logs(tmp_path, work)
        pytest.fail(f"the walkthrough did not finish within {WALKTHROUGH_TIMEOUT_S} s:\n{logs}")
    assert returncode == 0, f"a step of docs/deploy.md failed:\n{_logs(tmp_path, work)}"

    # What a user checks after the last step (the doc's operator token lived in its shell only).
    env = {
        **env,
        "EDGEFLEET_URL": f"https://127.0.0.1:{env['CONTROLLER_PORT']}",
        "EDGEFLEET_CA_FILE": str(work / "tls" / "ca.pem"),
        "EDGEFLEET_TOKEN": _viewer_token(tmp_path, work, env),
    }
    deadline, device = time.monotonic() + 45, None
    while time.monotonic() < deadline:
        device = _device(env, work)
        if device and device["online"] and device["last_seq"] > 0 and device["model_version"] == "1.1.0":
            break
        time.sleep(1)
    assert device is not None, f"the controller never listed the device:\n{_logs(tmp_path, work)}"
    assert (device["id"], device["site_id"], device["online"]) == ("press-42", "plant-test", True)
    assert device["last_seq"] > 0, "no record of the device reached the controller"
    assert (device["model_id"], device["model_version"], device["runtime"]) == (
        "sensor-mlp",
        "1.1.0",
        "onnxruntime",
    ), f"the device does not run the deployed version:\n{_logs(tmp_path, work)}"


def _device(env: dict[str, str], work: Path) -> dict[str, Any] | None:
    listed = subprocess.run(
        ["cloud-controller", "devices", "list", "--site", "plant-test", "--json"],
        env=env,
        cwd=work,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    data = json.loads(listed.stdout)["data"]
    return data[0] if data else None


def _viewer_token(tmp_path: Path, work: Path, env: dict[str, str]) -> str:
    """A viewer token of the test's own, made as the doc makes its tokens."""
    made = subprocess.run(
        ["cloud-controller", "admin", "create-token", "--config", "controller.yaml", "--role", "viewer"],
        env=env,
        cwd=work,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert made.returncode == 0, f"{made.stderr}\n{_logs(tmp_path, work)}"
    return made.stdout.strip()


def _logs(tmp_path: Path, work: Path) -> str:
    parts = [(tmp_path / "walkthrough.log").read_text(errors="replace")[-6000:]]
    for name in ("controller.log", "gateway.log", "agent.log"):
        path = work / name
        if path.exists():
            parts.append(f"--- {name}\n{path.read_text(errors='replace')[-3000:]}")
    return "\n".join(parts)


def _end_group(pgid: int) -> None:
    """SIGTERM to the walkthrough's process group, SIGKILL to what is left after 10 s."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
