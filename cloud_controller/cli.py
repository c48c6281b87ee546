"""``cloud-controller``: wires the commands; each lives in cloud_controller/commands/."""

from __future__ import annotations

import argparse
import sys

from cloud_controller.commands import (
    admin,
    bundle,
    deploy,
    devices,
    group,
    job,
    migrate,
    pki,
    rollout,
    serve,
    site,
    worker,
)
from cloud_controller.exceptions import ControllerError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="cloud-controller",
        description="edgefleet's fleet service: fleet API, model registry, ingest from gateways, desired "
        "state, rollouts in waves with gates, retraining jobs run by workers, audit log, dashboard and "
        "metrics. SQLite by default, PostgreSQL by database_url.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (serve, migrate, admin, pki, site, group, bundle, deploy, devices, rollout, job, worker):
        module.add(commands)
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except ControllerError as exc:
        print(f"cloud-controller: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
