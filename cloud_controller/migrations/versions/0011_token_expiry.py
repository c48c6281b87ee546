"""token expiry

Revision ID: 0011
Revises: 0010

An API token expires (`ApiToken.expires_at`, Unix time) and says when it was last used. Tokens
issued before this revision keep ``expires_at`` NULL, which never expires: setting a date here
would lock out running gateways without warning. `cloud-controller admin list-tokens` shows them
as "never"; re-issue them to give them an expiry.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_token", schema=None) as batch_op:
        batch_op.add_column(sa.Column("expires_at", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("last_used_at", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_token", schema=None) as batch_op:
        batch_op.drop_column("last_used_at")
        batch_op.drop_column("expires_at")
