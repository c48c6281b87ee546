"""``cloud-controller deploy``: a model version to every device of a group, in one step."""

from __future__ import annotations

import argparse

from rich.markup import escape

from cloud_controller.api_client import ApiClient, api_options, show
from cloud_controller.commands.group import find_group


def add(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    deploy = commands.add_parser(
        "deploy",
        parents=[api_options("an operator API token", ca_file=True)],
        help="deploy a model version to a whole group at once (no waves: see `rollout create`)",
        description="Make MODEL@VERSION the desired model of every device of GROUP now: their gateways "
        "relay the new desired state, each device downloads the bundle from its gateway's cache, verifies "
        "it and switches. The version needs an uploaded bundle (`bundle upload`) for the devices' runtime. "
        "To go in waves with gates and an automatic rollback, use `cloud-controller rollout create`. "
        "Refused (409) while the group has an active rollout.",
    )
    deploy.add_argument("--group", required=True, help="device group name (`group list`)")
    deploy.add_argument("--model", required=True, help="model id in the registry, e.g. sensor-mlp")
    deploy.add_argument("--version", required=True, help="version of that model, e.g. 1.0.0")
    deploy.set_defaults(run=_deploy)


def _deploy(args: argparse.Namespace) -> int:
    client = ApiClient.from_args(args)
    group = find_group(client, args.group)
    created = client.post(
        "/deployments", {"group_id": group["id"], "model_id": args.model, "version": args.version}
    )
    show(
        args,
        created,
        lambda c: c.print(
            f"deployment {created['id']}: {escape(created['model_id'])}@{escape(created['version'])} "
            f"to group {escape(group['name'])}"
        ),
    )
    return 0
