"""``cloud-controller migrate``."""

from __future__ import annotations

import argparse


def add(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = commands.add_parser(
        "migrate",
        help="upgrade the database schema (Alembic); data is kept",
        description="Apply every schema migration the database lacks, in order.",
    )
    p.add_argument("--config")
    p.add_argument("--revision", default="head", help="target revision (default: the latest)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # Imported here, as in `serve`: Alembic is for this command only.
    from cloud_controller.migrate import current_revision, upgrade
    from cloud_controller.settings import load_settings

    settings = load_settings(args.config)
    before = current_revision(settings.database_url)
    upgrade(settings.database_url, args.revision)
    print(f"schema {before or 'empty'} -> {current_revision(settings.database_url)}")
    return 0
