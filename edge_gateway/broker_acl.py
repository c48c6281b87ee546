"""What each identity may do on the site broker: the managed Mosquitto's TLS listener and ACL.

With client certificates from the fleet CA and ``use_identity_as_username``, the MQTT username is
the certificate's common name, which the client cannot choose. The ACL then ties names to topics:
a device writes only its own telemetry, state and events and reads only its own desired state and
labels; the gateway reads and writes its site; a labelling system writes labels of the site; an
observer (monitoring) reads the site. Mosquitto denies whatever no line allows.

One fleet CA signs the certificates of every site. Without a list of the site's devices, any other
name is a device here (a pattern on ``%u``), so a device of another site could speak as itself on
this site's broker. With the list (``broker.serve_tls.devices_file``, written by ``cloud-controller
pki devices --site``), only the names on it get a device's rights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fleet_protocol import InvalidTopic, TopicKind, validate_id
from fleet_protocol.topics import ROOT

_DEVICE_WRITES = (TopicKind.TELEMETRY, TopicKind.STATE, TopicKind.EVENTS)
_DEVICE_READS = (TopicKind.DESIRED, TopicKind.LABELS)


@dataclass(frozen=True, slots=True)
class SiteIdentities:
    """The identities of a site that are not devices (devices are every other certificate)."""

    site: str
    gateway: str
    labellers: tuple[str, ...] = field(default_factory=tuple)
    observers: tuple[str, ...] = field(default_factory=tuple)
    #: ACL lines added as they are (``user NAME`` / ``topic read|write|readwrite FILTER``).
    extra: tuple[str, ...] = field(default_factory=tuple)
    #: The site's devices; None: every other certificate's name is a device of this site.
    devices: tuple[str, ...] | None = None


def read_devices_file(path: Path) -> tuple[str, ...]:
    """The device ids in ``path``, one a line (``#`` comments and blank lines skipped).

    Raises
    ------
    OSError
        The file cannot be read.
    ValueError
        A line is not a device id (naming the line): the list is all or nothing.
    """
    devices = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        name = line.split("#", 1)[0].strip()
        if not name:
            continue
        try:
            validate_id(name, "device")
        except (InvalidTopic, ValueError) as exc:
            raise ValueError(f"{path}, line {number}: {exc}") from None
        devices.append(name)
    return tuple(devices)


def acl(identities: SiteIdentities) -> str:
    """The Mosquitto ACL file of a site broker."""
    site = f"{ROOT}/{identities.site}"
    lines = ["# Written by edge-gateway at each start: edit broker.serve_tls in its config instead.", ""]
    lines += [f"user {identities.gateway}", f"topic readwrite {site}/#", ""]
    for labeller in identities.labellers:
        lines += [f"user {labeller}", f"topic write {site}/+/{TopicKind.LABELS}", ""]
    for observer in identities.observers:
        lines += [f"user {observer}", f"topic read {site}/#", ""]
    if identities.extra:
        lines += [*identities.extra, ""]
    if identities.devices is not None:
        for device in identities.devices:
            lines.append(f"user {device}")
            lines += [f"topic write {site}/{device}/{kind}" for kind in _DEVICE_WRITES]
            lines += [f"topic read {site}/{device}/{kind}" for kind in _DEVICE_READS]
            lines.append("")
        return "\n".join(lines) + "\n"
    # Patterns apply to every client; %u is the certificate's common name. A name listed above is
    # a gateway, labeller or observer, never a device: the CA issues one name for one kind only.
    lines += [f"pattern write {site}/%u/{kind}" for kind in _DEVICE_WRITES]
    lines += [f"pattern read {site}/%u/{kind}" for kind in _DEVICE_READS]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class TlsListener:
    """The broker's own certificate and key, the fleet CA, and the CRL it checks clients against."""

    cert_file: Path
    key_file: Path
    ca_file: Path
    crl_file: Path | None = None


def tls_listener_lines(tls: TlsListener, acl_file: Path) -> list[str]:
    """The lines after ``listener``: every client shows a certificate of the fleet CA, not revoked."""
    lines = [
        "allow_anonymous false",
        f"cafile {tls.ca_file}",
        f"certfile {tls.cert_file}",
        f"keyfile {tls.key_file}",
        "require_certificate true",
        "use_identity_as_username true",
        # The client id becomes the name too: no one takes over another's session (or kicks it off)
        # by connecting with its client id.
        "use_username_as_clientid true",
        f"acl_file {acl_file}",
    ]
    if tls.crl_file is not None:
        lines.append(f"crlfile {tls.crl_file}")
    return lines
