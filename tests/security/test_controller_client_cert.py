"""A gateway authenticates to the controller by its fleet client certificate instead of a token.

A real `cloud-controller serve --certfile --keyfile --client-ca --crl` and a real `edge-gateway`
process without a token. What a user checks: the gateway's telemetry is stored under its site; its
certificate is bound to that site as a token is; a device's certificate, another CA's, none at all
and a revoked one (once the CRL changes, the controller still running) are refused.
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from sqlmodel import Session

from cloud_controller.auth import create_token
from cloud_controller.db import make_engine
from cloud_controller.migrate import upgrade
from cloud_controller.models import Role
from cloud_controller.pki import FleetPki
from fleet_protocol import ReportedState
from fleet_protocol.ingest import IngestBatch
from simulators.brokers import free_port
from simulators.gateways import GatewayProcess
from tests.gateway.conftest import controller_rows
from tests.gateway.factories import telemetry
from tests.security.pki_fixtures import SITE, Identity, issue
from tests.utils.broker import Mosquitto
from tests.utils.waiting import wait_until

CRL_CHECK_S = 0.3


@dataclass
class Fleet:
    url: str
    database_url: str
    pki: FleetPki
    ca: Path
    ids: dict[str, Identity]
    operator_token: str

    def client(self, identity: Identity | None, token: str | None = None) -> httpx.Client:
        """An HTTPS client trusting the fleet CA, showing ``identity``'s certificate (None: none)."""
        context = identity.context() if identity else ssl.create_default_context(cafile=str(self.ca))
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, verify=context, headers=headers, timeout=10)


def _batch(site: str, gateway: str, batch_id: str) -> dict[str, object]:
    batch = IngestBatch(
        site=site,
        gateway_id=gateway,
        batch_id=batch_id,
        devices=[ReportedState(device_id=f"dev-{batch_id}", site=site, online=True)],
    )
    return {"content": batch.model_dump_json(), "headers": {"Content-Type": "application/json"}}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("client-cert")
    pki = FleetPki.init(tmp / "ca")
    out = tmp / "identities"
    ids: dict[str, Identity] = {
        # The controller's HTTPS certificate, from the fleet CA too: the gateway trusts one CA.
        "server": issue(pki, out, "controller", "broker", site=None, hosts=["127.0.0.1", "localhost"]),
        "gw-a": issue(pki, out, "gw-a", "gateway"),
        "gw-r": issue(pki, out, "gw-r", "gateway"),
        "dev-1": issue(pki, out, "dev-1", "device"),
    }
    rogue = FleetPki.init(tmp / "rogue-ca")
    ids["rogue"] = issue(rogue, tmp / "rogue", "gw-a", "gateway")

    database_url = f"sqlite:///{tmp / 'controller.sqlite'}"
    upgrade(database_url)
    engine = make_engine(database_url)
    with Session(engine) as session:
        operator = create_token(session=session, name="cert-test-operator", role=Role.OPERATOR)
    engine.dispose()
    port = free_port()
    env = {
        **os.environ,
        "EDGEFLEET_CONTROLLER__DATABASE_URL": database_url,
        "EDGEFLEET_CONTROLLER__BUNDLE_DIR": str(tmp / "bundles"),
        "EDGEFLEET_CONTROLLER__TLS_CRL_CHECK_S": str(CRL_CHECK_S),
    }
    server = ids["server"]
    command = [
        *(sys.executable, "-m", "cloud_controller.cli", "serve", "--no-migrate", "--port", str(port)),
        *("--certfile", str(server.cert), "--keyfile", str(server.key)),
        *("--client-ca", str(out / "ca.pem"), "--crl", str(pki.crl_path)),
    ]
    log = tmp / "controller.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(command, env=env, stdout=sink, stderr=sink)
    fleet = Fleet(f"https://127.0.0.1:{port}", database_url, pki, out / "ca.pem", ids, operator)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, f"cloud-controller serve exited:\n{log.read_text()}"
            try:
                with fleet.client(None) as client:
                    if client.get("/healthz").status_code == 200:
                        break
            except httpx.TransportError:
                assert time.monotonic() < deadline, f"no /healthz over HTTPS:\n{log.read_text()}"
                time.sleep(0.1)
        yield fleet
    finally:
        process.terminate()
        process.wait(10)


async def test_a_gateway_without_a_token_delivers_by_its_certificate(
    fleet: Fleet, broker: Mosquitto, tmp_path: Path
) -> None:
    # Its TLS files beside its config, named relative to it (as on a gateway's disk).
    tls = tmp_path / "gateway" / "tls"
    tls.mkdir(parents=True)
    for source in (fleet.ids["gw-a"].cert, fleet.ids["gw-a"].key, fleet.ids["gw-a"].ca):
        shutil.copy2(source, tls / source.name)
    gateway = GatewayProcess(
        tmp_path / "gateway",
        {
            "gateway_id": "gw-a",
            "site": SITE,
            "broker": {"host": "127.0.0.1", "port": broker.port},
            "upstream": {
                "url": fleet.url,
                "ca_file": "tls/ca.pem",
                "cert_file": "tls/gw-a.pem",
                "key_file": "tls/gw-a.key",
                "linger_s": 0.1,
            },
            "device_classes": [{"name": "all", "forward_all": True}],
        },
    )
    gateway.start()
    try:
        publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="dev-7-publisher")
        publisher.connect("127.0.0.1", broker.port)
        publisher.loop_start()
        try:
            message = publisher.publish(
                f"fleet/{SITE}/dev-7/telemetry", telemetry("dev-7", range(1, 11)), qos=1
            )
            message.wait_for_publish(10)
        finally:
            publisher.loop_stop()
            publisher.disconnect()

        def stored() -> int:
            query = "SELECT COUNT(*) FROM telemetry WHERE device_id = 'dev-7'"
            return int(controller_rows(fleet.database_url, query)[0][0])

        await wait_until(lambda: stored() == 10, 20, "the gateway's 10 records at the controller")
    finally:
        gateway.stop()
    by_site = "SELECT site_id, COUNT(*) FROM telemetry WHERE device_id = 'dev-7' GROUP BY site_id"
    assert controller_rows(fleet.database_url, by_site) == [(SITE, 10)]
    assert controller_rows(fleet.database_url, "SELECT COUNT(*) FROM api_token WHERE name LIKE 'cert:%'") == [
        (0,)
    ], "a certificate caller is no stored token"


def test_a_gateway_certificate_is_bound_to_its_site(fleet: Fleet) -> None:
    with fleet.client(fleet.ids["gw-a"]) as client:
        own = client.post("/api/v1/ingest", **_batch(SITE, "gw-a", "own"))  # type: ignore[arg-type]
        other = client.post("/api/v1/ingest", **_batch("site-b", "gw-a", "other"))  # type: ignore[arg-type]
        desired = client.get("/api/v1/sites/site-b/desired")
        operators_only = client.get("/api/v1/tokens")
    assert own.status_code == 200, own.text
    assert other.status_code == 403 and "site-a, not site-b" in other.json()["detail"]
    assert desired.status_code == 403
    assert (
        operators_only.status_code == 403
        and operators_only.json()["detail"] == "Role gateway may not do this"
    )


def test_a_device_certificate_no_certificate_and_another_cas_are_refused(fleet: Fleet) -> None:
    with fleet.client(fleet.ids["dev-1"]) as client:
        device = client.post("/api/v1/ingest", **_batch(SITE, "gw-a", "dev"))  # type: ignore[arg-type]
        # A token, when sent, wins over the certificate.
        with_token = client.get("/api/v1/sites", headers={"Authorization": f"Bearer {fleet.operator_token}"})
    assert device.status_code == 403
    assert "'dev-1' is a device's: only a gateway's certificate" in device.json()["detail"]
    assert with_token.status_code == 200, with_token.text

    with fleet.client(None) as client:
        anonymous = client.post("/api/v1/ingest", **_batch(SITE, "gw-a", "anon"))  # type: ignore[arg-type]
    assert anonymous.status_code == 401 and anonymous.json()["detail"] == "Missing bearer token"
    assert anonymous.headers["WWW-Authenticate"] == "Bearer"

    # Same name, another CA: OpenSSL ends the handshake (alert unknown ca); no HTTP answer at all
    # (over TLS 1.3 the client sees it as a disconnection before any response).
    rogue = fleet.ids["rogue"]
    impostor = Identity(rogue.name, rogue.cert, rogue.key, fleet.ca)
    with fleet.client(impostor) as client, pytest.raises(httpx.TransportError):
        client.post("/api/v1/ingest", **_batch(SITE, "gw-a", "rogue"))  # type: ignore[arg-type]


def test_a_revoked_gateway_certificate_is_refused_once_the_crl_changes(fleet: Fleet) -> None:
    with fleet.client(fleet.ids["gw-r"]) as client:  # one keep-alive connection throughout
        before = client.post("/api/v1/ingest", **_batch(SITE, "gw-r", "before"))  # type: ignore[arg-type]
        assert before.status_code == 200, before.text
        fleet.pki.revoke("gw-r")
        deadline = time.monotonic() + CRL_CHECK_S + 5
        while True:
            after = client.post("/api/v1/ingest", **_batch(SITE, "gw-r", "after"))  # type: ignore[arg-type]
            if after.status_code != 200 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    assert after.status_code == 401, after.text
    assert "'gw-r'" in after.json()["detail"] and "revoked" in after.json()["detail"]
    with fleet.client(fleet.ids["gw-a"]) as client:
        still = client.post("/api/v1/ingest", **_batch(SITE, "gw-a", "still"))  # type: ignore[arg-type]
    assert still.status_code == 200, "the other gateway is not affected"
