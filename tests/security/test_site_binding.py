"""A device certificate is bound to its site: on another site's broker it has no rights.

One fleet CA signs every site's identities, so TLS alone lets a device of site-b connect to
site-a's broker. With ``broker.serve_tls.devices_file`` (written by ``cloud-controller pki devices
--site site-a``) only the site's devices get a device's rights there; the file is re-read while the
gateway runs, and the broker reloads its ACL without dropping anyone.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloud_controller.cli import main as controller_cli
from cloud_controller.pki import FleetPki
from simulators.brokers import free_port
from simulators.gateways import GatewayProcess
from tests.gateway.factories import telemetry
from tests.security.pki_fixtures import SITE, Session, issue, running_gateway, site_gateway, site_pki


@pytest.fixture
def site(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Site-a's gateway with a devices file of its site, and a device certificate of site-b."""
    pki, out, ids = site_pki(
        tmp_path,
        {"dev-1": ("dev-1", "device", {}), "dev-b": ("dev-b", "device", {"site": "site-b"})},
    )
    devices_file = tmp_path / "gateway" / "site-devices"
    assert (
        controller_cli(["pki", "devices", "--dir", str(pki.root), "--site", SITE, "--out", str(devices_file)])
        == 0
    )
    with running_gateway(tmp_path, pki, ids, devices_file=str(devices_file)) as (port, gateway):
        yield {
            "pki": pki,
            "ids": ids,
            "port": port,
            "gateway": gateway,
            "out": out,
            "devices_file": devices_file,
        }


def _telemetry_from(gateway: GatewayProcess) -> set[str]:
    return set(gateway.in_transit().highest_seq)


def _wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_a_device_of_another_site_has_no_rights_and_a_new_device_of_the_site_gets_them(site) -> None:  # type: ignore[no-untyped-def]
    ids, port, gateway, pki = site["ids"], site["port"], site["gateway"], site["pki"]
    assert site["devices_file"].read_text().splitlines()[1:] == ["dev-1"]

    # dev-b's certificate is of the fleet CA: the TLS handshake succeeds, its publish does not.
    foreign = Session(port, ids["dev-b"], "agent-dev-b")
    assert foreign.connect(), foreign.refused
    foreign.publish_denied(f"fleet/{SITE}/dev-b/telemetry", telemetry("dev-b", range(1, 4), site=SITE))

    dev1 = Session(port, ids["dev-1"], "agent-dev-1")
    assert dev1.connect(), dev1.refused
    try:
        dev1.publish(f"fleet/{SITE}/dev-1/telemetry", telemetry("dev-1", range(1, 4), site=SITE))
        _wait_for(lambda: "dev-1" in _telemetry_from(gateway), 15, "dev-1's batch at the gateway")
        assert _telemetry_from(gateway) == {"dev-1"}, "nothing of dev-b's reached the gateway"

        # A device issued for site-a later: the operator writes the list again; the gateway sees it
        # and the broker reloads its ACL without dropping dev-1's connection.
        dev3 = issue(pki, site["out"], "dev-3", "device")
        pki.write_site_devices(SITE, site["devices_file"])
        _wait_for(lambda: "the broker reloaded its ACL" in gateway.log.read_text(), 15, "the ACL reloaded")
        newcomer = Session(port, dev3, "agent-dev-3")
        assert newcomer.connect(), newcomer.refused
        try:
            newcomer.publish(f"fleet/{SITE}/dev-3/telemetry", telemetry("dev-3", range(1, 3), site=SITE))
            _wait_for(lambda: "dev-3" in _telemetry_from(gateway), 15, "dev-3's batch at the gateway")
        finally:
            newcomer.close()
        assert not dev1.lost.is_set(), "the reload kept dev-1's connection"
        dev1.publish(f"fleet/{SITE}/dev-1/telemetry", telemetry("dev-1", range(4, 6), site=SITE))
        _wait_for(lambda: gateway.in_transit().highest_seq.get("dev-1") == 5, 15, "dev-1's second batch")
    finally:
        dev1.close()
    assert gateway.dead_letters() == []


def test_a_devices_file_with_a_bad_line_stops_the_gateway_at_start_naming_it(tmp_path: Path) -> None:
    pki = FleetPki.init(tmp_path / "ca")
    out = tmp_path / "identities"
    broker, gw = (
        issue(pki, out, "broker-a", "broker", hosts=["127.0.0.1"]),
        issue(pki, out, "gw-a", "gateway"),
    )
    devices_file = tmp_path / "site-devices"
    devices_file.write_text("dev-1\nnot a device id\n")
    gateway = GatewayProcess(
        tmp_path / "gateway", site_gateway(free_port(), gw, broker, devices_file=str(devices_file))
    )
    gateway.start(wait=False)
    assert gateway.process is not None
    code = gateway.process.wait(30)
    assert code != 0
    assert f"{devices_file}, line 2" in gateway.log.read_text()
