"""``cloud-controller admin revoke-token ID_OR_NAME``."""

from __future__ import annotations

import argparse

from cloud_controller.commands.admin.database import session


def add(sub: argparse._SubParsersAction, config: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "revoke-token",
        parents=[config],
        help="revoke an API token for good, by id or by its (unique) name",
        description="Takes effect at the token's next request. Recorded in the audit log.",
    )
    p.add_argument("token", metavar="ID_OR_NAME")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from cloud_controller.auth import find_token, revoke_token

    with session(args.config) as db:
        token = find_token(session=db, id_or_name=args.token)
        changed = revoke_token(session=db, token=token)
        outcome = "revoked" if changed else "was revoked already"
        print(f"token {token.id} ({token.name}, {token.role.value}) {outcome}")
    return 0
