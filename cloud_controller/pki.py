"""The fleet CA: one certificate per device, gateway, labelling system and site broker, and a CRL.

The broker takes a client certificate's common name as the MQTT username, and its ACL gives
that name its topics (`edge_gateway.broker_acl`), so a name must mean one identity of one
kind: the CA refuses to issue a name again for another kind. The subject says the kind too
(X.520 ``role``, `KIND_OID`), for whoever checks a certificate without the CA's index: the
controller lets a gateway in by its certificate (`cloud_controller.client_cert`), never a device.
Keys are ECDSA P-256 (small and fast on a device's TLS stack); a device can keep its key to itself
by sending a CSR (`edge-agent enroll`) instead of letting the CA generate the key.

Layout of the CA directory (the CA key never leaves it; files holding keys are 0600)::

    ca.key  ca.pem  crl.pem  index.json  (index: serial -> identity, kind, site, dates, revocation)
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import ipaddress
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleet_protocol import validate_id

Kind = Literal["device", "gateway", "labeller", "observer", "broker"]
KINDS: tuple[Kind, ...] = ("device", "gateway", "labeller", "observer", "broker")

_ORG = "edgefleet"
#: X.520 ``role`` (2.5.4.72): the subject attribute holding the kind ("gateway", "device", ...).
KIND_OID = x509.ObjectIdentifier("2.5.4.72")
_CA_KEY, _CA_CERT, _CRL, _INDEX, _LOCK = "ca.key", "ca.pem", "crl.pem", "index.json", ".lock"


class PkiError(Exception):
    """The CA directory or a request is not usable; the message says why."""


@dataclass(slots=True)
class IssuedCert:
    serial: str
    identity: str
    kind: Kind
    site: str | None
    not_before: str
    not_after: str
    revoked_at: str | None = None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def write_private(path: Path, data: bytes) -> None:
    """Write a secret so that it is never readable by others, not even for an instant."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def make_csr(identity: str, key: ec.EllipticCurvePrivateKey) -> bytes:
    """A CSR naming ``identity``: what a device sends to the CA, keeping its key."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


class FleetPki:
    """A CA directory; `init` creates one, the constructor opens one."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not (self.root / _CA_CERT).is_file() or not (self.root / _CA_KEY).is_file():
            raise PkiError(f"{self.root} holds no fleet CA: create one with `cloud-controller pki init`")

    @classmethod
    def init(cls, root: str | Path, *, name: str = "edgefleet fleet CA", days: int = 3650) -> FleetPki:
        """Create a CA (key, self-signed certificate, empty CRL) in an empty or new directory."""
        root = Path(root)
        if (root / _CA_KEY).exists():
            raise PkiError(f"{root} already holds a fleet CA: refusing to overwrite its key")
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o700)
        key = new_key()
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORG),
                x509.NameAttribute(NameOID.COMMON_NAME, name),
            ]
        )
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        write_private(root / _CA_KEY, _key_pem(key))
        (root / _CA_CERT).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (root / _INDEX).write_text("{}\n")
        pki = cls(root)
        pki.write_crl()
        return pki

    # -- reading -----------------------------------------------------------------------

    @property
    def ca_pem(self) -> bytes:
        return (self.root / _CA_CERT).read_bytes()

    @property
    def crl_path(self) -> Path:
        return self.root / _CRL

    def _ca(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        cert = x509.load_pem_x509_certificate(self.ca_pem)
        key = serialization.load_pem_private_key((self.root / _CA_KEY).read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PkiError(f"{self.root / _CA_KEY} is not an EC key")
        return cert, key

    def certificates(self) -> list[IssuedCert]:
        data = json.loads((self.root / _INDEX).read_text())
        return [IssuedCert(**entry) for entry in data.values()]

    def site_devices(self, site: str) -> list[str]:
        """The devices of ``site`` with a certificate not revoked: what its broker's ACL may grant
        device rights to (``broker.serve_tls.devices_file``), so that no other site's device has any."""
        return sorted(
            {
                c.identity
                for c in self.certificates()
                if c.kind == "device" and c.site == site and not c.revoked_at
            }
        )

    def write_site_devices(self, site: str, path: Path) -> list[str]:
        """Write `site_devices` to ``path``, one id a line (atomically: a gateway may be reading it)."""
        devices = self.site_devices(site)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(
            f"# devices of site {site}, written by `cloud-controller pki devices`\n"
            + "".join(f"{d}\n" for d in devices)
        )
        os.replace(tmp, path)
        return devices

    @contextlib.contextmanager
    def _index(self) -> Iterator[dict[str, IssuedCert]]:
        """The index under an exclusive lock, written back (atomically) when the block ends."""
        with open(self.root / _LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = json.loads((self.root / _INDEX).read_text())
            index = {serial: IssuedCert(**entry) for serial, entry in data.items()}
            yield index
            tmp = self.root / (_INDEX + ".tmp")
            tmp.write_text(json.dumps({s: asdict(c) for s, c in index.items()}, indent=1) + "\n")
            os.replace(tmp, self.root / _INDEX)

    # -- issuing -----------------------------------------------------------------------

    def issue(
        self,
        identity: str,
        kind: Kind,
        *,
        site: str | None = None,
        hosts: Sequence[str] = (),
        csr_pem: bytes | None = None,
        days: int = 365,
    ) -> tuple[bytes, bytes | None]:
        """Sign a certificate for ``identity``; returns ``(cert_pem, key_pem or None)``.

        With ``csr_pem`` the key stays with its owner (None is returned for it); else a key is
        generated here. The CA sets the subject itself (CN = identity, OU = site, role = kind): a CSR only
        brings its public key, and must name the same identity.

        Raises
        ------
        PkiError
            For a bad identity or kind, a CSR that does not verify or names another identity,
            or a name already issued for another kind.
        """
        if kind not in KINDS:
            raise PkiError(f"unknown kind {kind!r}: one of {', '.join(KINDS)}")
        try:
            validate_id(identity, kind)
            if site is not None:
                validate_id(site, "site")
        except ValueError as exc:
            raise PkiError(str(exc)) from None
        if kind in ("device", "gateway") and site is None:
            raise PkiError(f"a {kind} certificate must name its site (--site)")
        if kind == "broker" and not hosts:
            raise PkiError("a broker certificate must name the hosts devices reach it by (--host)")
        key: ec.EllipticCurvePrivateKey | None = None
        if csr_pem is None:
            key = new_key()
            public_key = key.public_key()
        else:
            public_key = self._csr_key(csr_pem, identity)
        ca_cert, ca_key = self._ca()
        attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORG)]
        if site is not None:
            attributes.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, site))
        attributes.append(x509.NameAttribute(KIND_OID, kind))
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, identity))
        now = _now()
        usage = ExtendedKeyUsageOID.SERVER_AUTH if kind == "broker" else ExtendedKeyUsageOID.CLIENT_AUTH
        with self._index() as index:
            for issued in index.values():
                if issued.identity == identity and issued.kind != kind:
                    raise PkiError(
                        f"{identity!r} is already a {issued.kind} of this fleet: one name, one kind"
                        " (the broker gives a name its topics)"
                    )
            serial = x509.random_serial_number()
            builder = (
                x509.CertificateBuilder()
                .subject_name(x509.Name(attributes))
                .issuer_name(ca_cert.subject)
                .public_key(public_key)
                .serial_number(serial)
                .not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + dt.timedelta(days=days))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                .add_extension(
                    x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
                )
            )
            if hosts:
                builder = builder.add_extension(x509.SubjectAlternativeName(_names(hosts)), critical=False)
            cert = builder.sign(ca_key, hashes.SHA256())
            index[format(serial, "x")] = IssuedCert(
                serial=format(serial, "x"),
                identity=identity,
                kind=kind,
                site=site,
                not_before=cert.not_valid_before_utc.isoformat(),
                not_after=cert.not_valid_after_utc.isoformat(),
            )
        return cert.public_bytes(serialization.Encoding.PEM), None if key is None else _key_pem(key)

    @staticmethod
    def _csr_key(csr_pem: bytes, identity: str) -> ec.EllipticCurvePublicKey:
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as exc:
            raise PkiError(f"the CSR is not a PEM certificate request: {exc}") from None
        if not csr.is_signature_valid:
            raise PkiError("the CSR's signature does not verify: it was altered or made with another key")
        names = [a.value for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        if names and names != [identity]:
            raise PkiError(f"the CSR names {names[0]!r}, not {identity!r}")
        key = csr.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise PkiError("the CSR's key is not an EC key (edge-agent enroll makes P-256 keys)")
        return key

    def revoke(self, identity: str) -> list[str]:
        """Revoke every live certificate of ``identity`` and rewrite the CRL; returns the serials."""
        revoked: list[str] = []
        with self._index() as index:
            for issued in index.values():
                if issued.identity == identity and issued.revoked_at is None:
                    issued.revoked_at = _now().isoformat()
                    revoked.append(issued.serial)
        if not revoked:
            raise PkiError(f"no live certificate of {identity!r} to revoke")
        self.write_crl()
        return revoked

    def write_crl(self, *, days: int = 365) -> Path:
        """Sign the CRL anew (revoked serials of the index) and write it.

        A CRL past its next update makes OpenSSL refuse every client, so brokers need a fresh
        one before ``days`` run out (`cloud-controller pki crl`).
        """
        ca_cert, ca_key = self._ca()
        now = _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(ca_cert.subject)
            .last_update(now - dt.timedelta(minutes=5))
            .next_update(now + dt.timedelta(days=days))
        )
        for issued in self.certificates():
            if issued.revoked_at is not None:
                builder = builder.add_revoked_certificate(
                    x509.RevokedCertificateBuilder()
                    .serial_number(int(issued.serial, 16))
                    .revocation_date(dt.datetime.fromisoformat(issued.revoked_at))
                    .build()
                )
        crl = builder.sign(ca_key, hashes.SHA256())
        tmp = self.root / (_CRL + ".tmp")
        tmp.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
        os.replace(tmp, self.crl_path)
        return self.crl_path

    def write_identity(
        self, out_dir: str | Path, identity: str, cert_pem: bytes, key_pem: bytes | None
    ) -> Path:
        """Write ``{identity}.pem``, ``{identity}.key`` (0600) and ``ca.pem`` into ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{identity}.pem").write_bytes(cert_pem)
        if key_pem is not None:
            write_private(out / f"{identity}.key", key_pem)
        (out / "ca.pem").write_bytes(self.ca_pem)
        return out


def certificate_kind(cert: x509.Certificate) -> str | None:
    """The kind `FleetPki.issue` wrote in ``cert``'s subject; None for one issued before it did."""
    kinds = cert.subject.get_attributes_for_oid(KIND_OID)
    return str(kinds[0].value) if len(kinds) == 1 else None


def _names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names
