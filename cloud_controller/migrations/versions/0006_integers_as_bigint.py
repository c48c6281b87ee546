"""integers as bigint

Revision ID: 0006
Revises: 0005

The protocol and the API accept integers up to 2**63 - 1 (sequence numbers, counts, ids in
paths); PostgreSQL's INTEGER stops at 2**31 - 1, so every integer column becomes BIGINT there,
and every SERIAL sequence too. SQLite needs nothing: its INTEGER is 64-bit already, and copying
the telemetry table in batch mode to rename a type would cost much and change nothing.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

#: Autoincrement ids: their SERIAL sequences are INTEGER too.
IDS = ("api_token", "audit_log", "device_group", "model_version", "deployment", "drift", "event")
#: (table, column) stored as INTEGER until now, referenced keys before the keys referencing them.
COLUMNS = (
    *((table, "id") for table in IDS),
    ("deployment", "group_id"),
    ("bundle", "model_version_id"),
    ("bundle", "size"),
    ("telemetry", "seq"),
    ("telemetry", "predicted"),
    ("device", "last_seq"),
    ("gateway", "records_ingested"),
    ("drift", "count"),
)


def _retype(column_type: type[sa.Integer], sequence_type: str) -> None:
    """Give every column of COLUMNS, and the sequences of IDS, these types on PostgreSQL."""
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    for table, column in COLUMNS:
        op.alter_column(table, column, type_=column_type())
    for table in IDS:
        sequence = bind.execute(sa.text("SELECT pg_get_serial_sequence(:table, 'id')"), {"table": table})
        # The name comes from the catalog, quoted there as needed.
        op.execute(f"ALTER SEQUENCE {sequence.scalar_one()} AS {sequence_type}")


def upgrade() -> None:
    _retype(sa.BigInteger, "bigint")


def downgrade() -> None:
    # Fails, changing nothing, if a value no longer fits: better than losing it.
    _retype(sa.Integer, "integer")
