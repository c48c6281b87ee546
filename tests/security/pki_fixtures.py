"""A fleet CA in a temporary directory and the identities of one site, for the security tests."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from cloud_controller.pki import FleetPki
from simulators.brokers import free_port
from simulators.gateways import GatewayProcess

SITE = "site-a"


@dataclass(frozen=True)
class Identity:
    name: str
    cert: Path
    key: Path
    ca: Path

    def tls(self) -> dict[str, str]:
        """The ``tls`` section of an agent's or gateway's config."""
        return {"ca_file": str(self.ca), "cert_file": str(self.cert), "key_file": str(self.key)}

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(str(self.cert), str(self.key))
        return context


def issue(pki: FleetPki, out: Path, name: str, kind: str, site: str | None = SITE, **kw: object) -> Identity:
    cert, key = pki.issue(name, kind, site=site, **kw)  # type: ignore[arg-type]
    pki.write_identity(out, name, cert, key)
    return Identity(name, out / f"{name}.pem", out / f"{name}.key", out / "ca.pem")


def client(port: int, identity: Identity | None, client_id: str, *, ca: Path | None = None) -> mqtt.Client:
    """A paho client over TLS, with ``identity``'s certificate (None: no certificate); not connected."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    if identity is not None:
        c.tls_set_context(identity.context())
    else:
        assert ca is not None
        c.tls_set_context(ssl.create_default_context(cafile=str(ca)))
    return c


def site_gateway(port: int, gateway: Identity, broker: Identity, **serve_tls: Any) -> dict[str, Any]:
    """The config of site-a's gateway ``gw-a`` running a TLS-only broker on ``port``; ``serve_tls``
    adds to its listener (crl_file, devices_file, labellers, ...)."""
    listener = {"cert_file": str(broker.cert), "key_file": str(broker.key), "ca_file": str(broker.ca)}
    return {
        "gateway_id": "gw-a",
        "site": SITE,
        "broker": {
            "listen": "127.0.0.1",
            "port": port,
            "tls": gateway.tls(),
            "serve_tls": {**listener, **serve_tls},
        },
    }


def site_pki(
    tmp_path: Path, identities: dict[str, tuple[str, str, dict[str, Any]]]
) -> tuple[FleetPki, Path, dict[str, Identity]]:
    """A fleet CA with ``broker-a`` and ``gw-a`` of site-a and ``identities`` (key: name, kind and
    `FleetPki.issue` options), written to ``tmp_path/identities``."""
    pki = FleetPki.init(tmp_path / "ca")
    out = tmp_path / "identities"
    ids = {
        "broker": issue(pki, out, "broker-a", "broker", hosts=["127.0.0.1", "localhost"]),
        "gateway": issue(pki, out, "gw-a", "gateway"),
    }
    ids |= {key: issue(pki, out, name, kind, **options) for key, (name, kind, options) in identities.items()}
    return pki, out, ids


@contextmanager
def running_gateway(
    tmp_path: Path, pki: FleetPki, ids: dict[str, Identity], **serve_tls: Any
) -> Iterator[tuple[int, GatewayProcess]]:
    """Site-a's gateway with a TLS-only broker on a free port, checking the CRL every 0.3 s;
    ``serve_tls`` adds to its listener. Stopped on exit."""
    port = free_port()
    serve_tls = {"crl_file": str(pki.crl_path), "crl_check_s": 0.3, **serve_tls}
    config = site_gateway(port, ids["gateway"], ids["broker"], **serve_tls)
    gateway = GatewayProcess(tmp_path / "gateway", config)
    gateway.start()
    try:
        yield port, gateway
    finally:
        gateway.stop()


class Session:
    """A connected paho client that records what it receives."""

    def __init__(
        self, port: int, identity: Identity | None, client_id: str, *, ca: Path | None = None
    ) -> None:
        self.client = client(port, identity, client_id, ca=ca)
        self.port = port
        self.connected = threading.Event()
        self.lost = threading.Event()
        self.refused: list[str] = []
        self.received: list[tuple[str, bytes]] = []
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda c, u, m: self.received.append((m.topic, m.payload))
        self.client.on_disconnect = lambda *args: self.lost.set()

    def _on_connect(self, c: object, u: object, flags: object, reason: Any, props: object) -> None:
        if reason.is_failure:
            self.refused.append(str(reason))
        else:
            self.connected.set()

    def connect(self, within: float = 5.0) -> bool:
        """True when the broker accepted us within ``within`` seconds."""
        try:
            self.client.connect("127.0.0.1", self.port, keepalive=5)
        except OSError as exc:  # ssl.SSLError is an OSError: the handshake was refused
            self.refused.append(repr(exc))
            return False
        self.client.loop_start()
        return self.connected.wait(within)

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def publish_denied(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish where the ACL says no, and close: Mosquitto 2.0 answers an MQTT 3.1.1 client's
        denied QoS 1 publish by cutting its connection (3.1.1 has no way to say "not authorized")."""
        self.client.publish(topic, payload, qos=1, retain=retain)
        cut = self.lost.wait(10)
        self.close()
        assert cut, f"the broker kept the connection of a client that published on {topic}"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
