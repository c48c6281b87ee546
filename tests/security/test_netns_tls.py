"""A device, its site and the cloud on three hosts (network namespaces joined by veth links).

What crosses the device's link is real, so a user's questions have real answers: records travel
device -> site broker (mutual TLS) -> gateway -> controller; the device link carries TLS only (no
telemetry in clear on the wire); and the device has no route to the cloud at all.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from cloud_controller.auth import Role
from cloud_controller.pki import FleetPki
from simulators.controller import ControllerProcess
from simulators.gateways import GatewayProcess
from tests.agent.factories import agent_config, write_config
from tests.gateway.conftest import controller_rows
from tests.security.netns import three_hosts
from tests.security.pki_fixtures import SITE, issue

ROOT = Path(__file__).resolve().parents[2]
RECORDS = 300
BROKER_PORT = 8883


def _frames(path: Path) -> list[bytes]:
    data, frames, at = path.read_bytes(), [], 0
    while at + 4 <= len(data):
        size = int.from_bytes(data[at : at + 4], "big")
        frames.append(data[at + 4 : at + 4 + size])
        at += 4 + size
    return frames


@pytest.mark.slow
def test_records_cross_three_hosts_over_mutual_tls_and_the_device_link_carries_no_clear_text(
    tmp_path: Path, bundles, public_key_file: Path
) -> None:  # type: ignore[no-untyped-def]
    with three_hosts() as net:
        pki = FleetPki.init(tmp_path / "ca")
        out = tmp_path / "identities"
        broker = issue(pki, out, "broker-a", "broker", hosts=[net.site_device_side_ip])
        gateway_id, device_id = issue(pki, out, "gw-a", "gateway"), issue(pki, out, "dev-1", "device")

        controller = ControllerProcess(tmp_path / "controller", public_key_file, token_prefix="test")
        controller.env["EDGEFLEET_CONTROLLER__HOST"] = "0.0.0.0"
        controller.start((("gateway", Role.GATEWAY, SITE),))
        processes: list[subprocess.Popen[bytes]] = []
        gateway = GatewayProcess(
            tmp_path / "gateway",
            {
                "gateway_id": "gw-a",
                "site": SITE,
                "trusted_keys": [str(public_key_file)],
                "broker": {
                    "listen": net.site_device_side_ip,
                    "port": BROKER_PORT,
                    "tls": gateway_id.tls(),
                    "serve_tls": {
                        "cert_file": str(broker.cert),
                        "key_file": str(broker.key),
                        "ca_file": str(broker.ca),
                        "crl_file": str(pki.crl_path),
                    },
                },
                "upstream": {
                    "url": f"http://{net.cloud_ip}:{controller.port}",
                    "token": controller.tokens["gateway"],
                    "linger_s": 0.2,
                },
                "device_classes": [{"name": "all", "forward_all": True}],
            },
            command_prefix=net.run_in(net.site_ns),
            reach=net.site_cloud_side_ip,
        )
        try:
            gateway.start()
            capture_file = tmp_path / "device-link.frames"
            capture = subprocess.Popen(
                [
                    *net.run_in(net.device_ns),
                    sys.executable,
                    "-m",
                    "tests.security.capture",
                    net.device_if,
                    str(capture_file),
                ],
                cwd=ROOT,
                stdout=subprocess.PIPE,
            )
            processes.append(capture)
            assert capture.stdout is not None and capture.stdout.readline().strip() == b"capturing"

            config = agent_config(
                tmp_path,
                port=BROKER_PORT,
                bundle=bundles["onnx-fp32"],
                public_key=public_key_file,
                site=SITE,
                source={"kind": "synthetic", "rate_hz": 100, "limit": RECORDS, "seed": 9},
                mqtt={"host": net.site_device_side_ip, "tls": device_id.tls()},
            )
            config_file = write_config(tmp_path / "agent.yaml", config)
            with (tmp_path / "agent.log").open("ab") as log:
                agent = subprocess.Popen(
                    [
                        *net.run_in(net.device_ns),
                        sys.executable,
                        "-m",
                        "edge_agent.cli",
                        "run",
                        "--config",
                        str(config_file),
                    ],
                    stdout=log,
                    stderr=log,
                )
            processes.append(agent)

            def stored() -> int:
                return int(controller_rows(controller.database_url, "SELECT COUNT(*) FROM telemetry")[0][0])

            deadline = time.monotonic() + 90
            while stored() < RECORDS and time.monotonic() < deadline:
                time.sleep(0.5)
            assert stored() == RECORDS, f"records at the controller (agent log: {tmp_path / 'agent.log'})"

            # The device has no route to the cloud: only its site is reachable from it.
            probe = subprocess.run(
                [
                    *net.run_in(net.device_ns),
                    sys.executable,
                    "-c",
                    f"import socket; socket.create_connection(('{net.cloud_ip}', {controller.port}), 3)",
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            assert probe.returncode != 0 and "unreachable" in probe.stderr.lower()
        finally:
            for process in processes:
                process.terminate()
                process.wait(15)
            gateway.stop()
            controller.stop()

    frames = _frames(capture_file)
    port = BROKER_PORT.to_bytes(2, "big")
    # IPv4 (no options: header of 20 bytes) + TCP: the broker's port as source or destination.
    to_broker = [f for f in frames if len(f) > 54 and port in (f[34:36], f[36:38])]
    wire = b"".join(to_broker)
    assert len(wire) > 20_000, "the capture saw the agent's traffic"
    assert b"\x17\x03\x03" in wire, "TLS application data records crossed the device link"
    for clear in (b'"records"', b'"device_id"', b"fleet/site-a/dev-1/telemetry", b'"outputs"'):
        assert clear not in wire, f"{clear!r} crossed the device link in clear"
