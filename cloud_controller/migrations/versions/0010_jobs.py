"""jobs

Revision ID: 0010
Revises: 0009

Pipeline jobs (`cloud_controller.job_models`): the job with its steps, artifacts and lease, the
rounds of a federated job, and the training recipe the registry keeps per model.
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_TEXT = sqlmodel.sql.sqltypes.AutoString


def upgrade() -> None:
    op.create_table(
        "job",
        sa.Column("id", _TEXT(), nullable=False),
        sa.Column("kind", _TEXT(), nullable=False),
        sa.Column("model_id", _TEXT(), nullable=False),
        sa.Column("state", _TEXT(), nullable=False),
        sa.Column("trigger", _TEXT(), nullable=False),
        sa.Column("trigger_ref", _TEXT(), nullable=True),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("step", _TEXT(), nullable=True),
        sa.Column("steps", sa.JSON(), nullable=False),
        sa.Column("artifacts", sa.JSON(), nullable=False),
        sa.Column("error", _TEXT(), nullable=True),
        sa.Column("outcome", _TEXT(), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("worker_id", _TEXT(), nullable=True),
        sa.Column("lease_until", sa.Float(), nullable=True),
        sa.Column("attempts", sa.BigInteger(), nullable=False),
        sa.Column("created_by", _TEXT(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=True),
        sa.Column("ended_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_job_model_id"), ["model_id"], unique=False)
        batch_op.create_index("ix_job_state_created_at", ["state", "created_at"], unique=False)
    op.create_table(
        "job_round",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("job_id", _TEXT(), nullable=False),
        sa.Column("round", sa.BigInteger(), nullable=False),
        sa.Column("loss", sa.Float(), nullable=True),
        sa.Column("accuracy", sa.Float(), nullable=True),
        sa.Column("sampled", sa.BigInteger(), nullable=False),
        sa.Column("responded", sa.BigInteger(), nullable=False),
        sa.Column("declined", sa.BigInteger(), nullable=False),
        sa.Column("failed", sa.BigInteger(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=True),
        sa.Column("at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["job.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("job_id", "round"),
    )
    with op.batch_alter_table("job_round", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_job_round_job_id"), ["job_id"], unique=False)
    op.create_table(
        "model_recipe",
        sa.Column("model_id", _TEXT(), nullable=False),
        sa.Column("recipe", sa.JSON(), nullable=False),
        sa.Column("updated_by", _TEXT(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("model_id"),
    )


def downgrade() -> None:
    op.drop_table("model_recipe")
    with op.batch_alter_table("job_round", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_job_round_job_id"))
    op.drop_table("job_round")
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.drop_index("ix_job_state_created_at")
        batch_op.drop_index(batch_op.f("ix_job_model_id"))
    op.drop_table("job")
