"""device model reason

Revision ID: 0007
Revises: 0006

`ReportedState` version 2 says why a device does not run its desired model
(`fleet_protocol.ModelReason`). It is stored as text, not as an enum type: the list is closed
per protocol version, and a value added later then needs no ALTER TYPE.
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("device", schema=None) as batch_op:
        batch_op.add_column(sa.Column("model_reason", sqlmodel.sql.sqltypes.AutoString(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("device", schema=None) as batch_op:
        batch_op.drop_column("model_reason")
