"""``cloud-controller pki init|issue|revoke|crl|list``: the fleet CA, kept in a directory.

The CA directory holds the CA's private key: keep it on the controller's host (or offline), never
on a gateway or a device. What a device or gateway needs is ``ca.pem``, its own certificate and
key, and (a broker) the CRL.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

from cloud_controller.exceptions import ControllerError

_DIR_HELP = "the CA directory (default ./fleet-ca; created by `pki init`, keep it private)"


class PkiCommandError(ControllerError):
    exit_code = 2


def add(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    pki = commands.add_parser(
        "pki",
        help="the fleet CA: certificates for devices, gateways, labellers and brokers; revocation",
        description="A certificate per device and per gateway (CN = its id, OU = its site) for MQTT"
        " over mutual TLS; site brokers take the common name as the MQTT username and apply an ACL"
        " per name (see `edge-gateway` broker.serve_tls).",
    )
    sub = pki.add_subparsers(dest="pki_command", required=True, metavar="PKI_COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dir", type=Path, default=Path("fleet-ca"), help=_DIR_HELP)

    p = sub.add_parser("init", parents=[common], help="create the CA (key, certificate, empty CRL)")
    p.add_argument("--name", default="edgefleet fleet CA", help="the CA's common name")
    p.add_argument("--days", type=int, default=3650, help="validity of the CA certificate (default 3650)")
    p.set_defaults(run=_init)

    p = sub.add_parser(
        "issue",
        parents=[common],
        help="sign a certificate for a device, gateway, labeller, observer or broker",
        description="With --csr the key stays with its owner (`edge-agent enroll` makes the CSR);"
        " without, a key is generated and written beside the certificate (mode 0600). Writes"
        " ID.pem (and ID.key) and ca.pem into --out.",
    )
    p.add_argument("identity", metavar="ID", help="the device, gateway, ... id: the certificate's CN")
    p.add_argument(
        "--kind",
        required=True,
        choices=["device", "gateway", "labeller", "observer", "broker"],
        help="what the identity is; a name is one kind for good",
    )
    p.add_argument("--site", help="the site (required for devices and gateways): the certificate's OU")
    p.add_argument(
        "--host",
        action="append",
        default=[],
        help="a broker's DNS name or IP as clients reach it (repeat; include 127.0.0.1 for its gateway)",
    )
    p.add_argument("--csr", type=Path, help="sign this PEM CSR instead of generating a key")
    p.add_argument("--out", type=Path, default=Path("."), help="where to write ID.pem, ID.key, ca.pem")
    p.add_argument("--days", type=int, default=365, help="validity (default 365)")
    p.set_defaults(run=_issue)

    p = sub.add_parser(
        "revoke",
        parents=[common],
        help="revoke every certificate of an identity and rewrite the CRL",
        description="Copy the CRL (DIR/crl.pem) to each gateway's broker.serve_tls.crl_file: the"
        " gateway restarts its broker when the file changes, which cuts the revoked identity off.",
    )
    p.add_argument("identity", metavar="ID")
    p.set_defaults(run=_revoke)

    p = sub.add_parser(
        "crl",
        parents=[common],
        help="sign the CRL anew (brokers refuse every client once the CRL's next update passes)",
    )
    p.add_argument("--days", type=int, default=365, help="until the next update (default 365)")
    p.set_defaults(run=_crl)

    p = sub.add_parser("list", parents=[common], help="the certificates issued, with their state")
    p.set_defaults(run=_list)

    p = sub.add_parser(
        "devices",
        parents=[common],
        help="write a site's devices (certificates not revoked) for its gateway's broker ACL",
        description="Copy the file to the gateway's broker.serve_tls.devices_file (with the CRL): only"
        " the names it lists get a device's rights on that site's broker, so a device certificate of"
        " another site gets none. Run it again after issuing or revoking a device of the site.",
    )
    p.add_argument("--site", required=True, help="the site")
    p.add_argument("--out", type=Path, required=True, help="the file to write (one id a line)")
    p.set_defaults(run=_devices)


@contextlib.contextmanager
def _refusals() -> Iterator[None]:
    """The CA's refusals (`PkiError`) as the command's: their message, exit code 2."""
    from cloud_controller.pki import PkiError

    try:
        yield
    except PkiError as exc:
        raise PkiCommandError(str(exc)) from None


def _open(directory: Path):  # type: ignore[no-untyped-def]
    from cloud_controller.pki import FleetPki

    with _refusals():
        return FleetPki(directory)


def _init(args: argparse.Namespace) -> int:
    from cloud_controller.pki import FleetPki

    with _refusals():
        pki = FleetPki.init(args.dir, name=args.name, days=args.days)
    print(f"fleet CA created in {pki.root}: give {pki.root / 'ca.pem'} to every device and gateway")
    return 0


def _issue(args: argparse.Namespace) -> int:
    pki = _open(args.dir)
    csr = None
    if args.csr is not None:
        try:
            csr = args.csr.read_bytes()
        except OSError as exc:
            raise PkiCommandError(f"cannot read {args.csr}: {exc.strerror}") from None
    with _refusals():
        cert, key = pki.issue(
            args.identity, args.kind, site=args.site, hosts=args.host, csr_pem=csr, days=args.days
        )
    out = pki.write_identity(args.out, args.identity, cert, key)
    written = [f"{args.identity}.pem"] + ([f"{args.identity}.key (0600)"] if key else []) + ["ca.pem"]
    print(f"{args.kind} {args.identity}: wrote {', '.join(written)} to {out}")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    pki = _open(args.dir)
    with _refusals():
        serials = pki.revoke(args.identity)
    print(f"revoked {args.identity} (serials {', '.join(serials)}); CRL written to {pki.crl_path}")
    return 0


def _crl(args: argparse.Namespace) -> int:
    pki = _open(args.dir)
    print(f"CRL written to {pki.write_crl(days=args.days)}")
    return 0


def _list(args: argparse.Namespace) -> int:
    pki = _open(args.dir)
    rows = pki.certificates()
    if not rows:
        print("no certificates issued yet")
    for c in sorted(rows, key=lambda c: (c.kind, c.identity, c.not_before)):
        state = f"revoked {c.revoked_at}" if c.revoked_at else f"valid until {c.not_after}"
        sys.stdout.write(f"{c.kind:9} {c.identity:32} site={c.site or '-':16} {c.serial}  {state}\n")
    return 0


def _devices(args: argparse.Namespace) -> int:
    pki = _open(args.dir)
    devices = pki.write_site_devices(args.site, args.out)
    print(f"{len(devices)} devices of site {args.site} written to {args.out}")
    return 0
