"""``cloud-controller admin``: tokens, on the controller's own database (no API token needed).

Wires the commands; each lives in its own module beside this one.
"""

from __future__ import annotations

import argparse

from cloud_controller.commands.admin import create_token, list_tokens, revoke_token
from cloud_controller.commands.admin.create_token import ROLES

__all__ = ["ROLES", "add"]


def add(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    admin = commands.add_parser("admin", help="administration: API tokens")
    sub = admin.add_subparsers(dest="admin_command", required=True, metavar="ADMIN_COMMAND")
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument("--config", help="controller YAML (EDGEFLEET_CONTROLLER__* variables override it)")
    for module in (create_token, list_tokens, revoke_token):
        module.add(sub, config)
