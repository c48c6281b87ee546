"""``cloud-controller admin create-token``."""

from __future__ import annotations

import argparse

#: `cloud_controller.models.Role`'s values, spelt out so that the CLI does not load the database stack.
ROLES = ("viewer", "operator", "gateway", "device")


def add(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    admin = commands.add_parser("admin", help="administration: tokens")
    sub = admin.add_subparsers(dest="admin_command", required=True, metavar="ADMIN_COMMAND")
    p = sub.add_parser(
        "create-token",
        help="create an API token and print it (shown once)",
        description="viewer reads; operator changes the fleet and rolls out; gateway ingests "
        "and reads its site's desired state; device nothing else.",
    )
    p.add_argument("--config")
    p.add_argument("--role", required=True, choices=ROLES)
    p.add_argument("--name", default="cli")
    p.add_argument("--site", help="bind a gateway token to one site")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # Imported here, as in `serve`: `rollout ...` and `--help` should not load the database stack.
    from sqlmodel import Session

    from cloud_controller.auth import create_token
    from cloud_controller.db import make_engine
    from cloud_controller.models import Role
    from cloud_controller.settings import load_settings

    settings = load_settings(args.config)
    engine = make_engine(settings.database_url)
    with Session(engine) as session:
        print(create_token(session=session, name=args.name, role=Role(args.role), site_id=args.site))
    engine.dispose()
    return 0
