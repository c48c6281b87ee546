"""MQTT over TLS with a client certificate: the settings a device or a gateway holds.

Every certificate comes from the fleet CA (`cloud-controller pki`); the broker takes the
certificate's common name as the MQTT username (``use_identity_as_username``), and its ACL ties
that name to the topics the identity may use. So a key is the identity: `context` refuses a key
file that other users of the machine can read.
"""

from __future__ import annotations

import ssl
import stat
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class TlsConfigError(ValueError):
    """TLS files are missing, unreadable, too open, or do not fit together."""


class MqttTls(BaseModel):
    """Where the fleet CA, this identity's certificate and its key are."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ca_file: Path = Field(description="The fleet CA certificate (PEM); the broker's must chain to it")
    cert_file: Path = Field(description="This identity's certificate (PEM), CN = device or gateway id")
    key_file: Path = Field(description="This identity's private key (PEM), readable by its owner only")
    verify_hostname: bool = Field(
        default=True, description="Check that the broker's certificate names the host connected to"
    )

    def context(self) -> ssl.SSLContext:
        """A client context: TLS 1.2 or newer, the broker verified against the fleet CA.

        Raises
        ------
        TlsConfigError
            Naming the file and what is wrong with it.
        """
        check_private_key_mode(self.key_file)
        try:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise TlsConfigError(f"cannot load the fleet CA {self.ca_file}: {exc}") from None
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = self.verify_hostname
        try:
            context.load_cert_chain(str(self.cert_file), str(self.key_file))
        except (OSError, ssl.SSLError) as exc:
            raise TlsConfigError(
                f"cannot load certificate {self.cert_file} with key {self.key_file}: {exc}"
            ) from None
        return context


def resolve_tls_paths(section: dict[str, Any], base: Path) -> dict[str, Any]:
    """A config file's TLS section with relative ``*_file`` paths taken from the file's folder."""
    return {k: str(base / v) if k.endswith("_file") and isinstance(v, str) else v for k, v in section.items()}


def check_private_key_mode(path: Path) -> None:
    """Refuse a key that is missing or that group or others may read (it would leak the identity)."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise TlsConfigError(f"cannot read private key {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise TlsConfigError(
            f"private key {path} is readable by group or others (mode {stat.S_IMODE(mode):04o}):"
            f" chmod 600 {path}"
        )
