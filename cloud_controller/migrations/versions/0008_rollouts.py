"""rollouts

Revision ID: 0008
Revises: 0007

Rollouts in waves with gates (`cloud_controller.rollout_models`): the rollout, its decisions, and a
partial unique index that allows one active rollout per group. Desired revisions per device
(`DesiredRevision`). What devices report of their updates: ``device.ota`` (the last OtaStatus) with
its state and rollout as columns, and ``event.rollout_id`` (filled in for the ota.* events stored
already) with an index, so that a rollout's events are read without a scan.
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_ACTIVE = "state IN ('running', 'paused')"
#: Rows per backfill batch: events are many, ota.* ones few.
_BATCH = 1000


def upgrade() -> None:
    op.create_table(
        "rollout",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("model_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("version", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("group_id", sa.BigInteger(), nullable=False),
        sa.Column("group_name", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("previous_model_id", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("previous_version", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("waves", sa.JSON(), nullable=False),
        sa.Column("soak_s", sa.Float(), nullable=False),
        sa.Column("shadow_s", sa.Float(), nullable=False),
        sa.Column("gates", sa.JSON(), nullable=False),
        sa.Column("state", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("current_wave", sa.BigInteger(), nullable=False),
        sa.Column("progress", sa.JSON(), nullable=False),
        sa.Column("step", sa.BigInteger(), nullable=False),
        sa.Column("created_by", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["group_id"], ["device_group.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("rollout", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_rollout_group_id"), ["group_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_rollout_state"), ["state"], unique=False)
        batch_op.create_index(
            "ux_rollout_active_group",
            ["group_id"],
            unique=True,
            sqlite_where=sa.text(_ACTIVE),
            postgresql_where=sa.text(_ACTIVE),
        )
    op.create_table(
        "rollout_decision",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("rollout_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("wave", sa.BigInteger(), nullable=False),
        sa.Column("action", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("reason", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("values", sa.JSON(), nullable=False),
        sa.Column("actor", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.ForeignKeyConstraint(["rollout_id"], ["rollout.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("rollout_decision", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_rollout_decision_rollout_id"), ["rollout_id"], unique=False)
    op.create_table(
        "desired_revision",
        sa.Column("device_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column("fingerprint", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("issued_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["device.id"]),
        sa.PrimaryKeyConstraint("device_id"),
    )
    with op.batch_alter_table("device", schema=None) as batch_op:
        batch_op.add_column(sa.Column("ota", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("ota_state", sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch_op.add_column(sa.Column("ota_rollout_id", sqlmodel.sql.sqltypes.AutoString(), nullable=True))
    with op.batch_alter_table("event", schema=None) as batch_op:
        batch_op.add_column(sa.Column("rollout_id", sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch_op.create_index("ix_event_rollout_id_kind", ["rollout_id", "kind"], unique=False)
    _backfill_event_rollouts()


def _backfill_event_rollouts() -> None:
    """``rollout_id`` of the ota.* events stored before this revision, from their data (JSON)."""
    event = sa.table(
        "event",
        sa.column("id", sa.BigInteger()),
        sa.column("kind", sa.String()),
        sa.column("data", sa.JSON()),
    )
    bind = op.get_bind()
    after = 0
    while True:
        rows = bind.execute(
            sa.select(event.c.id, event.c.data)
            .where(event.c.kind.like("ota.%"), event.c.id > after)
            .order_by(event.c.id)
            .limit(_BATCH)
        ).all()
        if not rows:
            return
        for event_id, data in rows:
            named = data.get("rollout_id") if isinstance(data, dict) else None
            if isinstance(named, str) and 0 < len(named) <= 64:
                bind.execute(
                    sa.text("UPDATE event SET rollout_id = :rollout WHERE id = :id"),
                    {"rollout": named, "id": event_id},
                )
        after = rows[-1][0]


def downgrade() -> None:
    with op.batch_alter_table("event", schema=None) as batch_op:
        batch_op.drop_index("ix_event_rollout_id_kind")
        batch_op.drop_column("rollout_id")
    with op.batch_alter_table("device", schema=None) as batch_op:
        batch_op.drop_column("ota_rollout_id")
        batch_op.drop_column("ota_state")
        batch_op.drop_column("ota")
    op.drop_table("desired_revision")
    with op.batch_alter_table("rollout_decision", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_rollout_decision_rollout_id"))
    op.drop_table("rollout_decision")
    with op.batch_alter_table("rollout", schema=None) as batch_op:
        batch_op.drop_index("ux_rollout_active_group")
        batch_op.drop_index(batch_op.f("ix_rollout_state"))
        batch_op.drop_index(batch_op.f("ix_rollout_group_id"))
    op.drop_table("rollout")
