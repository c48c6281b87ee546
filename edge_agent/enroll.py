"""``edge-agent enroll``: a device's key stays on the device; the fleet CA sees only a CSR.

Step 1 on the device: ``edge-agent enroll --device-id ID --dir DIR`` writes ``DIR/device.key``
(0600, kept when it exists) and ``DIR/device.csr``. Step 2 at the CA: ``cloud-controller pki
issue ID --kind device --site SITE --csr device.csr``. Step 3 on the device: ``edge-agent enroll
--dir DIR --install-cert ID.pem --ca ca.pem`` checks that the certificate is for this key and
chains to the CA, installs both, and prints the ``mqtt.tls`` section of the agent's config.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleet_protocol import validate_id

KEY, CSR, CERT, CA = "device.key", "device.csr", "device.pem", "ca.pem"


class EnrollError(Exception):
    """Enrollment cannot go on; the message says why and what to do."""


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = commands.add_parser(
        "enroll",
        help="make this device's TLS key and CSR, then install the certificate the fleet CA signed",
        description="Step 1: --device-id ID writes DIR/device.key (0600; an existing key is kept)"
        " and DIR/device.csr for `cloud-controller pki issue ID --kind device --site SITE --csr`."
        " Step 2: --install-cert CERT --ca CA checks the certificate matches the key and chains to"
        " the CA, installs them as DIR/device.pem and DIR/ca.pem, and prints the mqtt.tls section.",
    )
    p.add_argument("--dir", type=Path, default=Path("tls"), help="where the key, CSR and certificate live")
    p.add_argument("--device-id", help="step 1: the device id the CSR names")
    p.add_argument("--install-cert", type=Path, help="step 2: the certificate the CA signed")
    p.add_argument("--ca", type=Path, help="step 2: the fleet CA certificate (ca.pem)")


def run(args: argparse.Namespace) -> int:
    try:
        if args.install_cert is not None:
            if args.ca is None:
                raise EnrollError("--install-cert needs --ca (the fleet CA's ca.pem)")
            identity = install_certificate(args.dir, args.install_cert, args.ca)
            print(f"installed the certificate of {identity} in {args.dir}; the agent's config needs:")
            print("mqtt:\n  tls:")
            for name, file in (("ca_file", CA), ("cert_file", CERT), ("key_file", KEY)):
                print(f"    {name}: {(args.dir / file).resolve()}")
            return 0
        if args.device_id is None:
            raise EnrollError("give --device-id (step 1) or --install-cert with --ca (step 2)")
        csr, created = make_request(args.dir, args.device_id)
        kept = "made a new key" if created else "kept the existing key"
        print(f"{kept} ({args.dir / KEY}, 0600) and wrote {csr}: have the fleet CA sign it")
        return 0
    except EnrollError as exc:
        print(f"edge-agent enroll: {exc}", file=sys.stderr)
        return 1


def make_request(directory: Path, device_id: str) -> tuple[Path, bool]:
    """Write the key (unless there is one) and a CSR naming ``device_id``; returns (CSR path, new key?)."""
    try:
        validate_id(device_id, "device")
    except ValueError as exc:
        raise EnrollError(str(exc)) from None
    directory.mkdir(parents=True, exist_ok=True)
    key_path = directory / KEY
    created = not key_path.exists()
    if created:
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, pem)
            os.fsync(fd)
        finally:
            os.close(fd)
    else:
        key = _load_key(key_path)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    csr_path = directory / CSR
    csr_path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    return csr_path, created


def install_certificate(directory: Path, cert_file: Path, ca_file: Path) -> str:
    """Check and install a signed certificate; returns the identity (CN) it names."""
    key = _load_key(directory / KEY)
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        ca = x509.load_pem_x509_certificate(ca_file.read_bytes())
    except (OSError, ValueError) as exc:
        raise EnrollError(f"cannot read the certificate or the CA: {exc}") from None
    if cert.public_key() != key.public_key():
        raise EnrollError(
            f"{cert_file} is not for this device's key {directory / KEY}: was the CSR from here?"
        )
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise EnrollError(f"{cert_file} was not signed by the CA in {ca_file}: {exc}") from None
    shutil.copyfile(cert_file, directory / CERT)
    shutil.copyfile(ca_file, directory / CA)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else "?"


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        if path.stat().st_mode & 0o077:
            raise EnrollError(f"{path} is readable by group or others: chmod 600 {path}")
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise EnrollError(f"cannot read the device key {path}: {exc.strerror}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise EnrollError(f"{path} is not an EC key")
    return key
