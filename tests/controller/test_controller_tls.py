"""`cloud-controller serve --certfile --keyfile`: HTTPS, a Secure session cookie, /metrics behind a token."""

from __future__ import annotations

import datetime as dt
import gzip
import ipaddress
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlmodel import Session

from cloud_controller.auth import create_token
from cloud_controller.db import make_engine
from cloud_controller.migrate import upgrade
from cloud_controller.models import Role
from simulators.brokers import free_port
from tests.controller.conftest import Controller

METRICS_TOKEN = "scrape-me-0123456789abcdef"


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, signed by its own key: ``(cert.pem, key.pem)``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgefleet test controller")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key_file.chmod(0o600)
    return cert_file, key_file


@dataclass
class TlsController:
    url: str
    tokens: dict[str, str]
    trust: ssl.SSLContext
    cert: Path

    def client(self, role: str | None = "operator") -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[role]}"} if role else {}
        return httpx.Client(base_url=self.url, headers=headers, verify=self.trust, timeout=30)


@pytest.fixture(scope="module")
def tls_controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsController]:
    tmp = tmp_path_factory.mktemp("tls")
    cert, key = self_signed(tmp)
    database_url = f"sqlite:///{tmp / 'controller.sqlite'}"
    upgrade(database_url)
    engine = make_engine(database_url)
    with Session(engine) as session:
        tokens = {
            r.value: create_token(session=session, name=f"tls-{r.value}", role=r)
            for r in (Role.OPERATOR, Role.VIEWER)
        }
    engine.dispose()
    port = free_port()
    env = {
        **os.environ,
        "EDGEFLEET_CONTROLLER__DATABASE_URL": database_url,
        "EDGEFLEET_CONTROLLER__BUNDLE_DIR": str(tmp / "bundles"),
        "EDGEFLEET_CONTROLLER__METRICS_TOKEN": METRICS_TOKEN,
    }
    command = [sys.executable, "-m", "cloud_controller.cli", "serve", "--no-migrate", "--port", str(port)]
    with (tmp / "controller.log").open("wb") as log:
        process = subprocess.Popen(
            [*command, "--certfile", str(cert), "--keyfile", str(key)], env=env, stdout=log, stderr=log
        )
    controller = TlsController(
        f"https://127.0.0.1:{port}", tokens, ssl.create_default_context(cafile=str(cert)), cert
    )
    try:
        _wait_healthy(controller, process)
        yield controller
    finally:
        process.terminate()
        process.wait(10)


def _wait_healthy(controller: TlsController, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, "cloud-controller serve exited at start"
        try:
            with controller.client(None) as client:
                if client.get("/healthz").status_code == 200:
                    return
        except httpx.TransportError:
            time.sleep(0.1)
    pytest.fail("cloud-controller did not answer /healthz over HTTPS")


def test_https_serves_the_api_to_a_client_that_trusts_the_certificate(tls_controller: TlsController) -> None:
    with tls_controller.client("operator") as client:
        created = client.post("/api/v1/sites", json={"id": "site-tls", "name": "over TLS"})
        listed = client.get("/api/v1/sites")
    assert created.status_code == 201, created.text
    assert "site-tls" in {s["id"] for s in listed.json()["data"]}
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{tls_controller.url}/healthz", verify=ssl.create_default_context())
    with pytest.raises(httpx.TransportError):
        httpx.get(tls_controller.url.replace("https://", "http://") + "/healthz", timeout=5)


def test_session_cookie_is_secure_over_https(tls_controller: TlsController) -> None:
    with tls_controller.client(None) as client:
        answer = client.post("/login", data={"token": tls_controller.tokens["viewer"]})
    assert answer.status_code == 303
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith("edgefleet_token=")
    assert {"secure", "httponly", "samesite=strict"} <= {p.strip().lower() for p in cookie.split(";")}


def test_session_cookie_over_plain_http_is_not_marked_secure(sqlite_controller: Controller) -> None:
    with sqlite_controller.client(None) as client:
        answer = client.post("/login", data={"token": sqlite_controller.tokens["viewer"]})
    assert answer.status_code == 303
    assert "secure" not in {p.strip().lower() for p in answer.headers["set-cookie"].split(";")}


def test_metrics_require_the_metrics_token_when_one_is_set(tls_controller: TlsController) -> None:
    with tls_controller.client(None) as client:
        anonymous = client.get("/metrics")
        wrong = client.get("/metrics", headers={"Authorization": "Bearer not-the-token"})
        api_token = client.get(
            "/metrics", headers={"Authorization": f"Bearer {tls_controller.tokens['operator']}"}
        )
        right = client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert anonymous.status_code == wrong.status_code == api_token.status_code == 401
    assert anonymous.json()["detail"] == "/metrics needs the metrics token (metrics_token)"
    assert anonymous.headers["WWW-Authenticate"] == "Bearer"
    assert right.status_code == 200 and "edgefleet_ingest_records_total" in right.text


def test_serve_refuses_a_certificate_without_its_key(tmp_path: Path) -> None:
    cert, _ = self_signed(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "cloud_controller.cli", "serve", "--certfile", str(cert)],
        env={**os.environ, "EDGEFLEET_CONTROLLER__DATABASE_URL": f"sqlite:///{tmp_path / 'c.sqlite'}"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "tls_certfile and tls_keyfile go together" in result.stderr


async def test_a_gateway_reaches_a_controller_whose_certificate_its_ca_file_names(
    tls_controller: TlsController,
) -> None:
    from edge_gateway.controller_client import ControllerClient
    from edge_gateway.exceptions import UpstreamError
    from fleet_protocol import ReportedState
    from fleet_protocol.ingest import IngestBatch

    with tls_controller.client() as client:
        created = client.post(
            "/api/v1/tokens", json={"role": "gateway", "name": "gw-tls", "site_id": "site-t"}
        )
    assert created.status_code == 201, created.text
    token = created.json()["token"]

    trusting = ControllerClient(tls_controller.url, token, ca_file=tls_controller.cert)
    try:
        # An upload (here, a gateway reporting one device) over HTTPS, then the site's desired state.
        batch = IngestBatch(
            site="site-t",
            gateway_id="gw-tls",
            batch_id="b-1",
            devices=[ReportedState(device_id="dev-t", site="site-t", online=True)],
        )
        result = await trusting.ingest(gzip.compress(batch.model_dump_json().encode()))
        assert result.devices_updated == 1
        desired = await trusting.desired("site-t", None)
        assert desired is not None and desired.states.site == "site-t"
    finally:
        await trusting.close()

    # Without it, the system's CAs do not know the controller's certificate: refused, and said why.
    default = ControllerClient(tls_controller.url, token)
    try:
        with pytest.raises(UpstreamError, match="(?i)certificate"):
            await default.desired("site-t", None)
    finally:
        await default.close()
