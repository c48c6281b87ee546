"""``cloud-controller admin create-token``."""

from __future__ import annotations

import argparse

from cloud_controller.commands.admin.database import session

#: `cloud_controller.models.Role`'s values, spelt out so that the CLI does not load the database stack.
ROLES = ("viewer", "operator", "gateway", "device")


def add(sub: argparse._SubParsersAction, config: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "create-token",
        parents=[config],
        help="create an API token and print it (shown once)",
        description="viewer reads; operator changes the fleet and rolls out; gateway ingests "
        "and reads its site's desired state (--site is required); device nothing else. Tokens "
        "expire: after 90 days for viewer and operator, 365 days for gateway and device, unless "
        "--expires-in says otherwise.",
    )
    p.add_argument("--role", required=True, choices=ROLES)
    p.add_argument("--name", default="cli")
    p.add_argument("--site", help="the site a gateway token ingests for (required for --role gateway)")
    p.add_argument(
        "--expires-in",
        metavar="LIFETIME",
        help="e.g. 30d, 12h, 90m, 3600s, or never "
        "(default: 90d for viewer and operator, 365d for gateway and device)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from cloud_controller.auth import create_token, parse_lifetime
    from cloud_controller.models import Role

    lifetime = parse_lifetime(args.expires_in) if args.expires_in is not None else None
    with session(args.config) as db:
        token = create_token(
            session=db, name=args.name, role=Role(args.role), site_id=args.site, expires_in_s=lifetime
        )
    print(token)
    return 0
