"""A run's fleet CA and a certificate for everything that speaks MQTT (scenario ``tls: true``).

The simulated fleet then runs as a production one does: every site broker takes only clients
with a certificate of the run's CA, under the ACL the gateway would generate for it
(`edge_gateway.broker_acl`); every agent, gateway, labeller and the observer show their own
certificate. Keys are written 0600 under ``run_dir/pki``.
"""

from __future__ import annotations

import threading
from pathlib import Path

from cloud_controller.pki import FleetPki, Kind
from edge_gateway.broker_acl import SiteIdentities, TlsListener, acl

OBSERVER = "sim-observer"
#: The observer's sync markers (`simulators.observer`) travel outside the fleet tree.
_OBSERVER_MARKERS = ("user " + OBSERVER, "topic readwrite fleet-sim/observer/#")


def gateway_name(site: str) -> str:
    return f"gw-{site}"


def labeller_name(site: str, process: int) -> str:
    """A labeller per agent process: the broker gives each name one session at a time."""
    return f"labeller-{site}-{process}"


class RunIdentities:
    def __init__(self, run_dir: Path) -> None:
        self.pki = FleetPki.init(run_dir / "pki" / "ca")
        self.out = run_dir / "pki" / "identities"
        self._lock = threading.Lock()  # devices are enrolled from worker threads

    def tls(self, name: str, kind: Kind, site: str | None = None) -> dict[str, str]:
        """The ``tls`` section of a client's config, issuing its certificate the first time."""
        cert, key = self.out / f"{name}.pem", self.out / f"{name}.key"
        with self._lock:
            if not cert.exists():
                cert_pem, key_pem = self.pki.issue(name, kind, site=site)
                self.pki.write_identity(self.out, name, cert_pem, key_pem)
        return {"ca_file": str(self.out / "ca.pem"), "cert_file": str(cert), "key_file": str(key)}

    def broker(self, site: str, processes: int) -> tuple[TlsListener, str]:
        """The TLS listener and the ACL of a site's broker, whose devices run in ``processes``."""
        name = f"broker-{site}"
        with self._lock:
            cert_pem, key_pem = self.pki.issue(name, "broker", hosts=["127.0.0.1", "localhost"])
            self.pki.write_identity(self.out, name, cert_pem, key_pem)
        listener = TlsListener(
            cert_file=self.out / f"{name}.pem",
            key_file=self.out / f"{name}.key",
            ca_file=self.out / "ca.pem",
            crl_file=self.pki.crl_path,
        )
        names = SiteIdentities(
            site=site,
            gateway=gateway_name(site),
            labellers=tuple(labeller_name(site, n) for n in range(processes)),
            observers=(OBSERVER,),
            extra=_OBSERVER_MARKERS,
        )
        return listener, acl(names)
