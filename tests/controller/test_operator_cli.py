"""``cloud-controller site|group|bundle|deploy|devices`` against a real controller, as typed."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlmodel import Session

from cloud_controller.auth import create_token
from cloud_controller.db import make_engine
from cloud_controller.migrate import upgrade
from cloud_controller.models import Role
from model_compiler.archive import pack
from simulators.brokers import free_port
from tests.controller.conftest import Controller
from tests.controller.test_controller_tls import self_signed


def test_operator_commands_take_a_fleet_from_a_site_to_a_deployment(
    sqlite_controller: Controller, bundles: dict[str, Path], tmp_path: Path
) -> None:
    ctl = sqlite_controller
    ctl.env |= {"EDGEFLEET_URL": ctl.url, "EDGEFLEET_TOKEN": ctl.tokens["operator"]}

    site = ctl.cli("site", "create", "plant-berlin", "--name", "Berlin plant")
    assert (site.returncode, site.stdout.strip()) == (0, "site plant-berlin created"), site.stderr
    sites = json.loads(ctl.cli("site", "list", "--json").stdout)
    assert [(s["id"], s["name"]) for s in sites["data"]] == [("plant-berlin", "Berlin plant")]

    group = ctl.cli("group", "create", "presses", "--select", "line=3", "--json")
    assert group.returncode == 0, group.stderr
    assert json.loads(group.stdout)["selector"] == {"line": "3"}
    everything = ctl.cli("group", "create", "everything")
    assert everything.returncode == 0 and "selects every device" in everything.stdout
    listed = ctl.cli("group", "list")
    assert "presses" in listed.stdout and "line=3" in listed.stdout

    # A .tar as model-compiler writes it, and a bundle directory (archived by the command).
    tar = pack(_copy(bundles["onnx-fp32"], tmp_path / "onnx-fp32"))
    uploaded = ctl.cli("bundle", "upload", str(tar))
    assert uploaded.returncode == 0, uploaded.stderr
    assert uploaded.stdout.startswith("stored sensor-mlp@1.0.0 (onnxruntime, ")
    # A copy of its own: other tests of this worker may pack the shared bundles beside themselves.
    directory = _copy(bundles["openvino-fp32"], tmp_path / "user" / "openvino-fp32")
    from_dir = json.loads(ctl.cli("bundle", "upload", str(directory), "--json").stdout)
    assert (from_dir["model_id"], from_dir["version"], from_dir["runtime"]) == (
        "sensor-mlp",
        "1.0.0",
        "openvino",
    )
    beside = sorted(p.name for p in directory.parent.iterdir())
    assert beside == ["openvino-fp32"], "nothing written beside the user's files"
    again = json.loads(ctl.cli("bundle", "upload", str(tar), "--json").stdout)
    assert again["sha256"] in uploaded.stdout

    deployed = ctl.cli("deploy", "--group", "everything", "--model", "sensor-mlp", "--version", "1.0.0")
    assert deployed.returncode == 0, deployed.stderr
    assert deployed.stdout.strip().endswith("sensor-mlp@1.0.0 to group everything")
    with ctl.client() as api:
        assert (
            api.post("/api/v1/devices", json={"id": "press-07", "site_id": "plant-berlin"}).status_code == 201
        )
        assert api.post("/api/v1/sites", json={"id": "plant-paris"}).status_code == 201
        assert (
            api.post("/api/v1/devices", json={"id": "press-08", "site_id": "plant-paris"}).status_code == 201
        )
        desired = api.get("/api/v1/devices/press-07/desired").json()
    assert desired["model"]["version"] == "1.0.0"

    devices = ctl.cli("devices", "list", "--site", "plant-berlin", "--json", "--token", ctl.tokens["viewer"])
    assert devices.returncode == 0, devices.stderr
    found = json.loads(devices.stdout)
    assert [(d["id"], d["online"], d["last_seq"]) for d in found["data"]] == [("press-07", False, 0)]
    table = ctl.cli("devices", "list", "--offline")
    assert "press-07" in table.stdout and "press-08" in table.stdout and "Devices (2)" in table.stdout


def test_operator_commands_say_why_they_fail(sqlite_controller: Controller, tmp_path: Path) -> None:
    ctl = sqlite_controller
    ctl.env |= {"EDGEFLEET_URL": ctl.url, "EDGEFLEET_TOKEN": ctl.tokens["operator"]}
    assert ctl.cli("site", "create", "plant-berlin").returncode == 0

    duplicate = ctl.cli("site", "create", "plant-berlin")
    assert (duplicate.returncode, duplicate.stderr.strip()) == (
        1,
        "cloud-controller: 409: Site already exists",
    )
    bad_id = ctl.cli("site", "create", "no spaces")
    assert bad_id.returncode == 1 and bad_id.stderr.startswith("cloud-controller: 422: id: ")
    viewer = ctl.cli("site", "create", "plant-paris", "--token", ctl.tokens["viewer"])
    assert viewer.stderr.strip() == "cloud-controller: 403: Role viewer may not do this"

    bad_selector = ctl.cli("group", "create", "presses", "--select", "line")
    assert (bad_selector.returncode, bad_selector.stderr.strip()) == (
        2,
        "cloud-controller: --select 'line': expected KEY=VALUE, e.g. line=3",
    )
    assert ctl.cli("group", "create", "presses").returncode == 0
    taken = ctl.cli("group", "create", "presses")
    assert taken.stderr.strip() == "cloud-controller: 409: Group already exists"

    no_group = ctl.cli("deploy", "--group", "lathes", "--model", "m", "--version", "1.0.0")
    assert (no_group.returncode, no_group.stderr.strip()) == (
        1,
        "cloud-controller: no group named 'lathes' (`cloud-controller group list` shows them)",
    )
    no_version = ctl.cli("deploy", "--group", "presses", "--model", "sensor-mlp", "--version", "9.9.9")
    assert no_version.stderr.strip() == "cloud-controller: 404: Model version not found"

    missing = ctl.cli("bundle", "upload", str(tmp_path / "nothing.tar"))
    assert missing.returncode == 2 and "nothing.tar does not exist" in missing.stderr
    not_a_tar = tmp_path / "model.onnx"
    not_a_tar.write_bytes(b"\x08\x07not an archive")
    refused = ctl.cli("bundle", "upload", str(not_a_tar))
    assert refused.returncode == 1
    assert refused.stderr.startswith("cloud-controller: 422: Bundle refused: not a complete bundle archive")

    down = ctl.cli("devices", "list", "--url", f"http://127.0.0.1:{free_port()}")
    assert down.returncode == 3 and "cannot reach the controller at http://127.0.0.1:" in down.stderr


def test_operator_commands_reach_an_https_controller_with_a_private_ca(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    database_url = f"sqlite:///{tmp_path / 'controller.sqlite'}"
    upgrade(database_url)
    engine = make_engine(database_url)
    with Session(engine) as session:
        token = create_token(session=session, name="https-operator", role=Role.OPERATOR)
    engine.dispose()
    port = free_port()
    env = {
        **os.environ,
        "EDGEFLEET_CONTROLLER__DATABASE_URL": database_url,
        "EDGEFLEET_CONTROLLER__BUNDLE_DIR": str(tmp_path / "bundles"),
    }
    command = [sys.executable, "-m", "cloud_controller.cli", "serve", "--no-migrate", "--port", str(port)]
    with (tmp_path / "controller.log").open("wb") as log:
        process = subprocess.Popen(
            [*command, "--certfile", str(cert), "--keyfile", str(key)], env=env, stdout=log, stderr=log
        )
    url = f"https://127.0.0.1:{port}"
    try:
        _wait_healthy(url, cert, process)
        cli = Controller(url, database_url, {"operator": token}, env, tmp_path / "bundles").cli

        untrusted = cli("site", "list", "--url", url, "--token", token)
        assert untrusted.returncode == 3 and "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr
        created = cli(
            "site", "create", "plant-berlin", "--url", url, "--token", token, "--ca-file", str(cert)
        )
        assert created.returncode == 0, created.stderr
        env["EDGEFLEET_CA_FILE"] = str(cert)
        listed = cli("site", "list", "--url", url, "--token", token, "--json")
        assert [s["id"] for s in json.loads(listed.stdout)["data"]] == ["plant-berlin"]
        bad_ca = cli("site", "list", "--url", url, "--token", token, "--ca-file", str(tmp_path / "none.pem"))
        assert bad_ca.returncode == 2 and "--ca-file" in bad_ca.stderr
    finally:
        process.terminate()
        process.wait(10)


def _wait_healthy(url: str, cert: Path, process: subprocess.Popen[bytes]) -> None:
    trust = ssl.create_default_context(cafile=str(cert))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, "cloud-controller serve exited at start"
        try:
            if httpx.get(f"{url}/healthz", verify=trust, timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    pytest.fail("cloud-controller did not answer /healthz over HTTPS")


def _copy(src: Path, dst: Path) -> Path:
    return Path(shutil.copytree(src, dst))


@pytest.fixture(autouse=True)
def _no_inherited_api_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("EDGEFLEET_URL", "EDGEFLEET_TOKEN", "EDGEFLEET_CA_FILE"):
        monkeypatch.delenv(name, raising=False)
