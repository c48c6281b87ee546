"""labels and alarms

Revision ID: 0009
Revises: 0008

Delayed ground truth (`cloud_controller.label_models.RecordLabel`, table ``label``) keyed like
telemetry by ``(device_id, seq)``; alarm policies per model; alarms, with a partial unique index
that allows one open alarm per (model, site, kind), and a nullable ``job_id`` the jobs worker
fills in when it starts a job for one.
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_OPEN = "resolved_at IS NULL"


def upgrade() -> None:
    op.create_table(
        "label",
        sa.Column("device_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("label", sa.BigInteger(), nullable=False),
        sa.Column("labelled_at", sa.Float(), nullable=False),
        sa.Column("received_at", sa.Float(), nullable=False),
        sa.Column("source", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("site_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.PrimaryKeyConstraint("device_id", "seq"),
    )
    with op.batch_alter_table("label", schema=None) as batch_op:
        batch_op.create_index("ix_label_site_id_received_at", ["site_id", "received_at"], unique=False)
    op.create_table(
        "alarm_policy",
        sa.Column("model_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("psi_threshold", sa.Float(), nullable=True),
        sa.Column("accuracy_floor", sa.Float(), nullable=True),
        sa.Column("min_samples", sa.BigInteger(), nullable=False),
        sa.Column("window_s", sa.Float(), nullable=False),
        sa.Column("action", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("updated_by", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("model_id"),
    )
    op.create_table(
        "alarm",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("model_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("version", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("site_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("samples", sa.BigInteger(), nullable=False),
        sa.Column("action", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("fired_at", sa.Float(), nullable=False),
        sa.Column("last_value", sa.Float(), nullable=False),
        sa.Column("evaluated_at", sa.Float(), nullable=False),
        sa.Column("resolved_at", sa.Float(), nullable=True),
        sa.Column("job_id", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("alarm", schema=None) as batch_op:
        batch_op.create_index("ix_alarm_fired_at", ["fired_at"], unique=False)
        batch_op.create_index(
            "ux_alarm_open",
            ["model_id", "site_id", "kind"],
            unique=True,
            sqlite_where=sa.text(_OPEN),
            postgresql_where=sa.text(_OPEN),
        )


def downgrade() -> None:
    with op.batch_alter_table("alarm", schema=None) as batch_op:
        batch_op.drop_index("ux_alarm_open")
        batch_op.drop_index("ix_alarm_fired_at")
    op.drop_table("alarm")
    op.drop_table("alarm_policy")
    with op.batch_alter_table("label", schema=None) as batch_op:
        batch_op.drop_index("ix_label_site_id_received_at")
    op.drop_table("label")
