"""``cloud-controller devices list``: the fleet's devices and what they report, from a terminal."""

from __future__ import annotations

import argparse
import time

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cloud_controller.api_client import ApiClient, api_options, show


def add(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    devices = commands.add_parser(
        "devices",
        help="list devices with their state, model and last record",
        description="Talks to a running controller's API (a viewer token is enough).",
    )
    sub = devices.add_subparsers(dest="devices_command", required=True, metavar="DEVICES_COMMAND")
    listing = sub.add_parser(
        "list",
        parents=[api_options("an API token: viewer or operator", ca_file=True)],
        help="devices, by id",
        description="List devices as their gateways report them: online, health, the model and version "
        "they run (and why not the desired one), the sequence number of the last record the controller "
        "stored and when it was seen. A device appears once its gateway has uploaded its first records.",
    )
    listing.add_argument("--site", help="only devices of this site")
    state = listing.add_mutually_exclusive_group()
    state.add_argument("--online", dest="online", action="store_const", const="true", help="only online ones")
    state.add_argument(
        "--offline", dest="online", action="store_const", const="false", help="only offline ones"
    )
    listing.add_argument("--label", metavar="KEY=VALUE", help="only devices with this label")
    listing.set_defaults(run=_list)


def _list(args: argparse.Namespace) -> int:
    found = ApiClient.from_args(args).get(
        "/devices", site_id=args.site, online=args.online, label=args.label, limit="1000"
    )

    def table(console: Console) -> None:
        out = Table(
            "id",
            "site",
            "online",
            "health",
            "model",
            "runtime",
            "not desired because",
            "last seq",
            "last seen (UTC)",
            title=f"Devices ({found['count']})",
        )
        for d in found["data"]:
            model = f"{d['model_id']}@{d['model_version']}" if d["model_id"] else "-"
            out.add_row(
                escape(d["id"]),
                escape(d["site_id"]),
                "yes" if d["online"] else "no",
                escape(d["health"] or "-"),
                escape(model),
                escape(d["runtime"] or "-"),
                escape(d["model_reason"] or ""),
                str(d["last_seq"]),
                _when(d["last_seen"]) if d["last_seen"] else "-",
            )
        console.print(out)

    show(args, found, table)
    return 0


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))
