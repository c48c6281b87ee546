"""alarm webhook notices

Revision ID: 0012
Revises: 0011

Whether the alarm webhook was told of each event of an alarm (`Alarm.fired_notice`,
`Alarm.resolved_notice`): NULL until sent, then "delivered" or "skipped". Alarms stored before
this revision count as delivered (fired, and resolved once resolved), so that configuring a
webhook after the upgrade replays no history; an alarm open now still notifies its resolution.
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("alarm", schema=None) as batch_op:
        batch_op.add_column(sa.Column("fired_notice", sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch_op.add_column(sa.Column("resolved_notice", sqlmodel.sql.sqltypes.AutoString(), nullable=True))
    op.execute("UPDATE alarm SET fired_notice = 'delivered'")
    op.execute("UPDATE alarm SET resolved_notice = 'delivered' WHERE resolved_at IS NOT NULL")


def downgrade() -> None:
    with op.batch_alter_table("alarm", schema=None) as batch_op:
        batch_op.drop_column("resolved_notice")
        batch_op.drop_column("fired_notice")
