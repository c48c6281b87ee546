"""Alembic environment: the models' metadata, the URL from cloud_controller.migrate."""

from __future__ import annotations

from alembic import context
from sqlalchemy import engine_from_config, pool
from sqlmodel import SQLModel

# Registers every table on SQLModel.metadata (both modules import cloud_controller.models).
import cloud_controller.job_models
import cloud_controller.label_models
import cloud_controller.rollout_models  # noqa: F401

config = context.config
target_metadata = SQLModel.metadata


def run() -> None:
    connectable = engine_from_config(
        config.get_section(config.config_ini_section, {}), prefix="sqlalchemy.", poolclass=pool.NullPool
    )
    with connectable.connect() as connection:
        # batch mode lets SQLite alter tables by copying them.
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


run()
