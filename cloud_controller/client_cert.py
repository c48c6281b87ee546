"""Gateways let in by their fleet client certificate instead of a token.

uvicorn hands the ASGI app no peer certificate. `protocol_class` is uvicorn's HTTP protocol (the
one ``http="auto"`` picks: httptools when installed, else h11) with one addition: on a TLS
connection whose client showed a certificate, every request's scope carries::

    scope["extensions"]["tls"] = {"client_cert_der": b"<the client's certificate, DER>"}

read once, when the connection is made. Only that key is set (none of the ASGI TLS extension's
others). OpenSSL has verified the certificate against the fleet CA in the handshake
(``ssl_cert_reqs=CERT_OPTIONAL``, ``ssl_ca_certs=tls_client_ca``): a certificate of another CA,
or an expired one, gets no connection at all; a client without one is served, and uses a token.

`ClientCertAuth.caller` turns that certificate into a caller, checked on every request (a
keep-alive connection outlives a revocation): issued by the fleet CA, clientAuth, of kind gateway
(the subject's ``role``, `cloud_controller.pki.KIND_OID`), of a site (OU), not in the fleet CRL.
The CRL is read again when its file changes, looked at every ``tls_crl_check_s`` at most.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cloud_controller.exceptions import ConfigError
from cloud_controller.models import ApiToken, Role
from cloud_controller.pki import certificate_kind
from cloud_controller.settings import ControllerSettings
from fleet_protocol import validate_id

log = logging.getLogger(__name__)

#: Where a request's scope holds the client's certificate (see the module's docstring).
SCOPE_EXTENSION, SCOPE_KEY = "tls", "client_cert_der"
#: What names a certificate caller: ``cert:<CN>`` (audit entries say ``gateway:cert:<CN>``).
NAME_PREFIX = "cert:"


class CertificateRefused(Exception):
    """The certificate lets no one in; ``status`` is the HTTP answer, the message says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def client_cert_der(scope: dict[str, Any]) -> bytes | None:
    """The certificate `protocol_class` put in ``scope``, or None."""
    return scope.get("extensions", {}).get(SCOPE_EXTENSION, {}).get(SCOPE_KEY)


def protocol_class() -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol for ``Config(http=...)``, putting the client's certificate in scope."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    class ClientCertProtocol(AutoHTTPProtocol):  # type: ignore[valid-type,misc]
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            ssl_object = transport.get_extra_info("ssl_object")
            der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
            if der:
                # Both of uvicorn's protocols run each request as ``self.app(scope, ...)``.
                self.app = _with_certificate(self.app, der)

    return ClientCertProtocol


def _with_certificate(app: Callable[..., Any], der: bytes) -> Callable[..., Any]:
    async def with_certificate(scope: dict[str, Any], receive: Any, send: Any) -> None:
        scope.setdefault("extensions", {})[SCOPE_EXTENSION] = {SCOPE_KEY: der}
        await app(scope, receive, send)

    return with_certificate


def caller_id(identity: str) -> int:
    """A certificate caller's ``id``: negative, so never a stored token's; the same for every
    certificate of one gateway, so that its ingest rate bucket (`IngestLimiter`) outlives a renewal."""
    return -1 - int.from_bytes(hashlib.sha256(identity.encode()).digest()[:7], "big")


class ClientCertAuth:
    """The fleet CA and its CRL, as the controller checks a gateway's certificate with them.

    Parameters
    ----------
    ca_file, crl_file
        The fleet CA certificate and CRL (PEM). Without a CRL no certificate is ever refused as
        revoked (said once in the log).
    check_s
        At most this often, a request looks whether the CRL file changed.
    clock
        Monotonic seconds; tests pass a fake one.

    Raises
    ------
    ConfigError
        When a file is missing, not PEM, or the CRL is not signed by the CA.
    """

    def __init__(
        self,
        ca_file: Path,
        crl_file: Path | None = None,
        *,
        check_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        try:
            self._ca = x509.load_pem_x509_certificate(ca_file.read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"tls_client_ca {ca_file}: not a readable PEM certificate: {exc}") from None
        self._crl_file, self._check_s, self._clock = crl_file, check_s, clock
        self._lock = threading.Lock()  # requests are authenticated in worker threads
        self._seen: tuple[int, int, int] | None = None  # the CRL file's (inode, mtime, size)
        self._revoked: frozenset[int] = frozenset()
        self._crl_expires: dt.datetime | None = None
        self._crl_error: str | None = None
        self._next_look = clock() + check_s
        if crl_file is None:
            log.warning("No tls_crl_file: revoked gateway certificates are let in until they expire")
            return
        self._read_crl()
        if self._crl_error is not None:
            raise ConfigError(self._crl_error)

    @classmethod
    def from_settings(cls, settings: ControllerSettings) -> ClientCertAuth | None:
        if settings.tls_client_ca is None:
            return None
        return cls(settings.tls_client_ca, settings.tls_crl_file, check_s=settings.tls_crl_check_s)

    def caller(self, der: bytes, *, now: dt.datetime | None = None) -> ApiToken:
        """The gateway ``der`` names, as an unsaved token of role gateway bound to its site.

        Raises
        ------
        CertificateRefused
            401 for a certificate that proves no identity (another CA, expired, revoked), 403 for
            one of an identity that may not use it (a device's, a server's), 503 when the CRL
            cannot be read.
        """
        now = dt.datetime.now(dt.UTC) if now is None else now
        try:
            cert = x509.load_der_x509_certificate(der)
            cert.verify_directly_issued_by(self._ca)
        except (ValueError, TypeError, InvalidSignature):
            raise CertificateRefused(401, "Client certificate not issued by the fleet CA") from None
        name = _one(cert.subject, NameOID.COMMON_NAME) or "?"
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise CertificateRefused(
                401, f"Client certificate of {name!r} is not valid now (expires {cert.not_valid_after_utc})"
            )
        if cert.serial_number in self._revoked_serials():
            raise CertificateRefused(
                401, f"Client certificate of {name!r} (serial {cert.serial_number:x}) is revoked"
            )
        try:
            usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            usages = x509.ExtendedKeyUsage([])
        kind, site = certificate_kind(cert), _one(cert.subject, NameOID.ORGANIZATIONAL_UNIT_NAME)
        if kind is None:
            raise CertificateRefused(
                403,
                f"Client certificate of {name!r} was issued before certificates named their kind: for a "
                f"gateway, issue it a new one (cloud-controller pki issue {name} --kind gateway --site SITE)",
            )
        if ExtendedKeyUsageOID.CLIENT_AUTH not in usages or kind != "gateway" or site is None:
            raise CertificateRefused(
                403,
                f"Client certificate of {name!r} is a {kind}'s: only a gateway's certificate lets it in "
                "without a token; send a token",
            )
        try:
            validate_id(name, "gateway")
            validate_id(site, "site")
        except ValueError as exc:
            raise CertificateRefused(403, f"Client certificate names no usable gateway: {exc}") from None
        return ApiToken(
            id=caller_id(name),
            name=f"{NAME_PREFIX}{name}",
            role=Role.GATEWAY,
            site_id=site,
            token_sha256=f"{NAME_PREFIX}{cert.serial_number:x}",  # no token: nothing hashes to it
            created_at=cert.not_valid_before_utc.timestamp(),
            expires_at=cert.not_valid_after_utc.timestamp(),
        )

    def _revoked_serials(self) -> frozenset[int]:
        if self._crl_file is None:
            return frozenset()
        with self._lock:
            if self._clock() >= self._next_look:
                self._next_look = self._clock() + self._check_s
                self._read_crl()
            if self._crl_error is not None:
                raise CertificateRefused(503, f"{self._crl_error}: no client certificate is accepted")
            if self._crl_expires is not None and self._crl_expires < dt.datetime.now(dt.UTC):
                raise CertificateRefused(
                    503,
                    f"The fleet CRL {self._crl_file} expired at {self._crl_expires}: no client certificate "
                    "is accepted until it is signed again (cloud-controller pki crl)",
                )
            return self._revoked

    def _read_crl(self) -> None:
        """Read the CRL when its file changed; on failure, refuse certificates until it reads."""
        assert self._crl_file is not None
        try:
            stat = self._crl_file.stat()
            seen = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
            if seen == self._seen and self._crl_error is None:
                return
            crl = x509.load_pem_x509_crl(self._crl_file.read_bytes())
        except (OSError, ValueError) as exc:
            self._fail(f"The fleet CRL {self._crl_file} cannot be read: {exc}")
            return
        if crl.issuer != self._ca.subject or not crl.is_signature_valid(self._ca.public_key()):  # type: ignore[arg-type]
            self._fail(f"The fleet CRL {self._crl_file} is not signed by the fleet CA")
            return
        self._seen, self._crl_error = seen, None
        self._revoked = frozenset(r.serial_number for r in crl)
        self._crl_expires = crl.next_update_utc
        log.info("Fleet CRL %s read: %d certificates revoked", self._crl_file, len(self._revoked))

    def _fail(self, error: str) -> None:
        if error != self._crl_error:
            log.error("%s: client certificates are refused until it is fixed", error)
        self._crl_error, self._seen = error, None


def _one(name: x509.Name, oid: x509.ObjectIdentifier) -> str | None:
    values = name.get_attributes_for_oid(oid)
    return str(values[0].value) if len(values) == 1 else None
