"""A Flower SuperNode's authentication key pair, in the files Flower 1.41 reads.

A SuperLink started with ``--enable-supernode-auth`` admits only SuperNodes whose public key was
registered through its Control API (``flwr supernode register <name>.pub <connection>``); the
SuperNode signs every request with its private key (``flower-supernode --auth-supernode-private-key
<name>``). Flower reads both in OpenSSH format (``load_ssh_private_key`` / ``load_ssh_public_key``)
and accepts NIST EC curves only; like ``ssh-keygen -t ecdsa -b 384 -N ""`` this writes a P-384 key,
unencrypted (the SuperNode has no way to ask for a passphrase), mode 0600, and the public key beside
it as ``<name>.pub``.

Provisioning calls :func:`write_node_keys` on the device (or gateway) and hands the ``.pub`` file to
whoever registers it; the private key never leaves the machine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fleet_learning.exceptions import LearningError

#: The file name ``flower-supernode --auth-supernode-private-key`` is given; the public key adds ``.pub``.
DEFAULT_NAME = "supernode"


class NodeKeyError(LearningError):
    """A SuperNode key file cannot be used: unreadable, not an EC key, or readable by others."""


@dataclass(frozen=True)
class NodeKeyPair:
    """Where a SuperNode's key pair is: the private key (0600) and its OpenSSH public key."""

    private_key: Path
    public_key: Path

    def public_line(self) -> str:
        """The public key as one line, ``ecdsa-sha2-nistp384 AAAA...``, e.g. for an inventory."""
        return self.public_key.read_text().strip()


def write_node_keys(directory: Path, name: str = DEFAULT_NAME) -> NodeKeyPair:
    """Write ``directory/name`` (a new P-384 private key) and ``name.pub``; return their paths.

    An existing private key is kept (its registration stays valid) and its public key is written
    again from it, so calling this on every provisioning run is safe.

    Raises
    ------
    NodeKeyError
        The existing private key is readable by group or others, unreadable, or not an EC key.
    """
    directory.mkdir(parents=True, exist_ok=True)
    private_path = directory / name
    public_path = directory / f"{name}.pub"
    try:
        key = _create(private_path)
    except FileExistsError:
        key = load_node_key(private_path)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    public_path.write_bytes(public + b"\n")
    return NodeKeyPair(private_path, public_path)


def load_node_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The private key at ``path`` as Flower will read it, or `NodeKeyError` saying what is wrong."""
    try:
        if path.stat().st_mode & 0o077:
            raise NodeKeyError(f"{path} is readable by group or others: chmod 600 {path}")
        key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise NodeKeyError(f"cannot read the SuperNode key {path}: {exc.strerror or exc}") from None
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise NodeKeyError(f"{path} is not an unencrypted OpenSSH private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise NodeKeyError(f"{path} is not an EC key (Flower accepts NIST EC curves only)")
    return key


def _create(path: Path) -> ec.EllipticCurvePrivateKey:
    """A new key in a new file, never readable by others, not even for an instant."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        key = ec.generate_private_key(ec.SECP384R1())
        os.write(
            fd,
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
            ),
        )
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)
    return key
