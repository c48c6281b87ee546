"""ed25519 signing and verification of model bundles.

The signature covers the exact bytes of ``manifest.json``, which the writer emits in
canonical form (sorted keys, no whitespace). The manifest pins every file by size and
sha256, so a verified manifest plus matching digests means the whole bundle is as signed.

Keys rotate: a verifier trusts several keys (`TrustedKey`), and a key may carry a
``retired_at``. From that moment on (the verifier's clock) a bundle it signed is refused
(`KeyRetired`, a `SignatureError`) unless the caller asks for ``allow_retired``: a device
uses that only for bundles it installed already, never for a new one.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fleet_protocol.bundle import MANIFEST_FILE, SIGNATURE_FILE, BundleManifest
from fleet_protocol.codec import decode
from fleet_protocol.exceptions import BundleError, DigestMismatch, KeyRetired, ProtocolError, SignatureError

_CHUNK = 1 << 20


#: Optional manifest fields left out of ``manifest.json`` while empty: a manifest that does not use
#: them is byte for byte what it was before they existed (same sha256, and older agents, whose
#: manifest model forbids unknown fields, still read it).
_OMITTED_WHEN_EMPTY = ("withdrawn_versions",)


def canonical_manifest_bytes(manifest: BundleManifest) -> bytes:
    """The bytes that are written to ``manifest.json`` and signed."""
    data = manifest.model_dump(mode="json")
    for name in _OMITTED_WHEN_EMPTY:
        if not data.get(name):
            data.pop(name, None)
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def key_id(public_key: Ed25519PublicKey) -> str:
    """Short, stable id of a public key: the first 16 hex digits of its sha256."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class TrustedKey:
    """A public key bundles may be signed by, and from when on it no longer may (``retired_at``)."""

    public_key: Ed25519PublicKey
    #: Aware datetime; None: not retired.
    retired_at: datetime | None = None

    @property
    def key_id(self) -> str:
        return key_id(self.public_key)

    def retired(self, now: float | None = None) -> bool:
        """Whether the key is retired at ``now`` (Unix seconds; default: this machine's clock)."""
        if self.retired_at is None:
            return False
        return (time.time() if now is None else now) >= self.retired_at.timestamp()


@dataclass(frozen=True, slots=True)
class VerifiedBundle:
    manifest: BundleManifest
    #: The key whose signature verified (retired or not, when the caller allowed that).
    signer: TrustedKey


def _trusted(keys: Iterable[Ed25519PublicKey | TrustedKey]) -> dict[str, TrustedKey]:
    """Key id -> key. A plain public key is one never retired; a key listed twice keeps its earliest
    retirement (the safer reading of a contradictory list)."""
    out: dict[str, TrustedKey] = {}
    for key in keys:
        trusted = key if isinstance(key, TrustedKey) else TrustedKey(key)
        known = out.get(trusted.key_id)
        if known is not None and (
            trusted.retired_at is None
            or (known.retired_at is not None and known.retired_at <= trusted.retired_at)
        ):
            continue
        out[trusted.key_id] = trusted
    return out


def generate_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_key_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """Read a PEM (PKCS#8) ed25519 private key."""
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path} is not an ed25519 private key")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """Read a PEM ed25519 public key.

    Raises
    ------
    SignatureError
        When the file is not a PEM ed25519 public key.
    """
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"{path} is not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"{path} is not an ed25519 public key")
    return key


def sign_manifest(manifest: BundleManifest, private_key: Ed25519PrivateKey) -> tuple[bytes, bytes]:
    """Sign a manifest.

    Parameters
    ----------
    manifest : BundleManifest
        The manifest, with every file's digest filled in.
    private_key : Ed25519PrivateKey
        The signing key.

    Returns
    -------
    tuple of bytes
        ``(manifest_bytes, signature_bytes)``: the contents of ``manifest.json`` and
        ``manifest.sig``.
    """
    body = canonical_manifest_bytes(manifest)
    envelope = {
        "algorithm": "ed25519",
        "key_id": key_id(private_key.public_key()),
        "signature": base64.b64encode(private_key.sign(body)).decode(),
    }
    return body, json.dumps(envelope, sort_keys=True).encode()


def file_digest(path: Path) -> str:
    """sha256 of a file, read in chunks so a large model never sits in memory twice."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_sha256(bundle_dir: str | Path) -> str:
    """sha256 of a bundle's ``manifest.json``: the id a desired state pins a bundle by."""
    return file_digest(Path(bundle_dir) / MANIFEST_FILE)


def verify_signature(
    manifest_bytes: bytes,
    signature_bytes: bytes,
    trusted_keys: Iterable[Ed25519PublicKey | TrustedKey],
    *,
    now: float | None = None,
    allow_retired: bool = False,
) -> TrustedKey:
    """Check that ``signature_bytes`` signs ``manifest_bytes`` with one of ``trusted_keys``.

    Parameters
    ----------
    trusted_keys : iterable of Ed25519PublicKey or TrustedKey
        A plain public key is one never retired.
    now : float, optional
        Unix seconds the retirements are judged at; default this machine's clock.
    allow_retired : bool
        Accept a signature by a key retired before ``now`` (for a bundle installed before).

    Returns
    -------
    TrustedKey
        The key that signed.

    Raises
    ------
    SignatureError
        Saying whether the signature is malformed, from an unknown key, or wrong;
        `KeyRetired` when it is right but its key was retired.
    """
    try:
        envelope = json.loads(signature_bytes)
        if envelope.get("algorithm") != "ed25519":
            raise SignatureError(f"unsupported signature algorithm {envelope.get('algorithm')!r}")
        signer = str(envelope["key_id"])
        signature = base64.b64decode(envelope["signature"], validate=True)
    except SignatureError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SignatureError(f"{SIGNATURE_FILE} is malformed: {exc}") from None
    keys = _trusted(trusted_keys)
    if not keys:
        raise SignatureError("no trusted public keys are configured: refusing every bundle")
    key = keys.get(signer)
    if key is None:
        raise SignatureError(
            f"bundle is signed by key {signer}, which is not trusted (trusted: {', '.join(keys)})"
        )
    try:
        key.public_key.verify(signature, manifest_bytes)
    except InvalidSignature:
        raise SignatureError(
            f"signature by key {signer} does not match {MANIFEST_FILE}: the manifest was changed"
            " after signing"
        ) from None
    # Judged only once the signature is right: "retired" is said of bundles the key really signed.
    if not allow_retired and key.retired(now):
        assert key.retired_at is not None
        current = [k for k, v in keys.items() if not v.retired(now)]
        raise KeyRetired(
            f"bundle is signed by key {signer}, retired at {key.retired_at.isoformat()}: bundles it"
            " signs are refused from then on (keys in use: "
            f"{', '.join(current) if current else 'none, every trusted key is retired'})",
            key_id=signer,
            retired_at=key.retired_at,
        )
    return key


def verify_bundle(
    bundle_dir: str | Path,
    trusted_keys: Iterable[Ed25519PublicKey | TrustedKey],
    *,
    now: float | None = None,
    allow_retired: bool = False,
) -> BundleManifest:
    """Verify a bundle directory and return its manifest (see `check_bundle`)."""
    return check_bundle(bundle_dir, trusted_keys, now=now, allow_retired=allow_retired).manifest


def check_bundle(
    bundle_dir: str | Path,
    trusted_keys: Iterable[Ed25519PublicKey | TrustedKey],
    *,
    now: float | None = None,
    allow_retired: bool = False,
) -> VerifiedBundle:
    """Verify a bundle directory: its manifest and the key that signed it.

    The signature is checked before the manifest is even parsed, then every file's size
    and sha256.

    Parameters
    ----------
    bundle_dir : path
        Directory holding ``manifest.json``, ``manifest.sig`` and the model files.
    trusted_keys : iterable of Ed25519PublicKey or TrustedKey
        Keys whose signatures this device accepts, with their retirements.
    now, allow_retired
        As for `verify_signature`.

    Returns
    -------
    VerifiedBundle
        The verified manifest and its signer.

    Raises
    ------
    BundleError
        ``SignatureError`` (``KeyRetired``), ``DigestMismatch``, or `BundleError` for a
        missing or unreadable file; the message says which file and why.
    """
    root = Path(bundle_dir)
    manifest_path, sig_path = root / MANIFEST_FILE, root / SIGNATURE_FILE
    if not manifest_path.is_file():
        raise BundleError(f"{root} is not a bundle: {MANIFEST_FILE} is missing")
    if not sig_path.is_file():
        raise SignatureError(f"bundle {root} is unsigned: {SIGNATURE_FILE} is missing")
    manifest_bytes = manifest_path.read_bytes()
    signer = verify_signature(
        manifest_bytes, sig_path.read_bytes(), trusted_keys, now=now, allow_retired=allow_retired
    )
    try:
        manifest = decode(manifest_bytes, BundleManifest, max_bytes=4 * 1024 * 1024)
    except ProtocolError as exc:
        raise BundleError(f"{MANIFEST_FILE} of {root} is invalid: {exc}") from None
    for name, entry in manifest.files.items():
        path = root / name
        if not path.is_file():
            raise BundleError(f"bundle {root} lacks {name}, listed in its manifest")
        size = path.stat().st_size
        if size != entry.size:
            raise DigestMismatch(f"{name} is {size} bytes, manifest says {entry.size}")
        if file_digest(path) != entry.sha256:
            raise DigestMismatch(f"{name} does not match its sha256 in the manifest: it was altered")
    return VerifiedBundle(manifest, signer)
