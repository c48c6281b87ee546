"""``cloud-controller admin list-tokens``: every token and its state, never a secret."""

from __future__ import annotations

import argparse
import json
import time

from cloud_controller.commands.admin.database import session


def add(sub: argparse._SubParsersAction, config: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "list-tokens",
        parents=[config],
        help="list API tokens: id, name, role, site, created, expires, revoked, last used",
    )
    p.add_argument("--json", action="store_true", help="print JSON (as GET /api/v1/tokens answers)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table
    from sqlmodel import col, select

    from cloud_controller.models import ApiToken
    from cloud_controller.token_models import TokenPublic, TokensPublic

    now = time.time()
    with session(args.config) as db:
        rows = db.exec(select(ApiToken).order_by(col(ApiToken.id))).all()
        tokens = TokensPublic(data=[TokenPublic.of(t, now) for t in rows], count=len(rows))
    if args.json:
        print(json.dumps(tokens.model_dump(mode="json"), indent=2))
        return 0
    table = Table(
        "id", "name", "role", "site", "created (UTC)", "expires (UTC)", "revoked", "last used (UTC)", "state"
    )
    for t in tokens.data:
        table.add_row(
            str(t.id),
            escape(t.name),
            t.role.value,
            t.site_id or "",
            _when(t.created_at),
            _when(t.expires_at) if t.expires_at is not None else "never",
            "yes" if t.revoked else "no",
            _when(t.last_used_at) if t.last_used_at is not None else "",
            t.state.value,
        )
    Console(width=160).print(table)
    return 0


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts))
