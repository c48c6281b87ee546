"""``cloud-controller group create|list``: device groups (label selectors) from a terminal."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cloud_controller.api_client import ApiClient, api_options, show
from cloud_controller.exceptions import ConfigError, NotFound


def add(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    group = commands.add_parser(
        "group",
        help="create and list device groups (what a deployment or a rollout targets)",
        description="Talks to a running controller's API (operator token to create, viewer to read).",
    )
    sub = group.add_subparsers(dest="group_command", required=True, metavar="GROUP_COMMAND")
    api = api_options("an API token: operator to create, viewer to read", ca_file=True)

    create = sub.add_parser(
        "create",
        parents=[api],
        help="create a group from a label selector",
        description="Create group NAME: the devices whose labels hold every --select KEY=VALUE. Without "
        "--select the group is every device of the fleet, at every site. A device's labels are set through "
        "the API (PATCH /api/v1/devices/ID); a device a gateway reports for the first time has none. "
        "409 if the name is taken.",
    )
    create.add_argument("name", metavar="NAME", help="group name, e.g. presses")
    create.add_argument(
        "--select",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a label the group's devices have (repeat: all of them); none: every device",
    )
    create.set_defaults(run=_create)

    listing = sub.add_parser(
        "list", parents=[api], help="groups and their selectors", description="List groups."
    )
    listing.set_defaults(run=_list)


def find_group(client: ApiClient, name: str) -> dict[str, Any]:
    """The group named ``name``, or `NotFound` saying how to list them."""
    for group in client.get("/groups")["data"]:
        if group["name"] == name:
            return group  # type: ignore[no-any-return]
    raise NotFound(f"no group named {name!r} (`cloud-controller group list` shows them)")


def _create(args: argparse.Namespace) -> int:
    selector: dict[str, str] = {}
    for item in args.select:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--select {item!r}: expected KEY=VALUE, e.g. line=3")
        selector[key] = value
    created = ApiClient.from_args(args).post("/groups", {"name": args.name, "selector": selector})
    show(
        args,
        created,
        lambda c: c.print(
            f"group {escape(created['name'])} (id {created['id']}) selects {_selects(created)}"
        ),
    )
    return 0


def _list(args: argparse.Namespace) -> int:
    found = ApiClient.from_args(args).get("/groups")

    def table(console: Console) -> None:
        out = Table("id", "name", "selector", title=f"Groups ({found['count']})")
        for g in found["data"]:
            out.add_row(str(g["id"]), escape(g["name"]), escape(_selects(g)))
        console.print(out)

    show(args, found, table)
    return 0


def _selects(group: dict[str, Any]) -> str:
    selector = group["selector"]
    return ", ".join(f"{k}={v}" for k, v in selector.items()) if selector else "every device"
