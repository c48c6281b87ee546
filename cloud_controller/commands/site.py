"""``cloud-controller site create|list``: the sites API from a terminal."""

from __future__ import annotations

import argparse
import time

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cloud_controller.api_client import ApiClient, api_options, show


def add(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    site = commands.add_parser(
        "site",
        help="create and list sites (a site is one gateway's devices)",
        description="Talks to a running controller's API (operator token to create, viewer to read). "
        "Create a site before its gateway's token (`admin create-token --role gateway --site ID`).",
    )
    sub = site.add_subparsers(dest="site_command", required=True, metavar="SITE_COMMAND")
    api = api_options("an API token: operator to create, viewer to read", ca_file=True)

    create = sub.add_parser(
        "create",
        parents=[api],
        help="create a site",
        description="Create site ID. Its gateway and devices name it in their configs (`site:`); "
        "409 if it exists.",
    )
    create.add_argument(
        "site_id", metavar="ID", help="site id: letters, digits, '.', '_', '-', e.g. plant-berlin"
    )
    create.add_argument("--name", default="", help="a readable name, e.g. 'Berlin plant'")
    create.set_defaults(run=_create)

    listing = sub.add_parser("list", parents=[api], help="sites, by id", description="List the sites.")
    listing.set_defaults(run=_list)


def _create(args: argparse.Namespace) -> int:
    created = ApiClient.from_args(args).post("/sites", {"id": args.site_id, "name": args.name})
    show(args, created, lambda c: c.print(f"site {escape(created['id'])} created"))
    return 0


def _list(args: argparse.Namespace) -> int:
    found = ApiClient.from_args(args).get("/sites", limit="1000")

    def table(console: Console) -> None:
        out = Table("id", "name", "created (UTC)", title=f"Sites ({found['count']})")
        for s in found["data"]:
            out.add_row(escape(s["id"]), escape(s["name"]), _when(s["created_at"]))
        console.print(out)

    show(args, found, table)
    return 0


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))
