"""outbox: settled_at, and the sent rows not yet settled, for the relay's search for lost messages

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06

The rows sent before this migration count as settled (at the epoch): the search starts from
now, rather than reading the whole history of the outbox once.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

UNSETTLED = "sent_at IS NOT NULL AND settled_at IS NULL"


# What the rows sent before this migration get as settled_at: the epoch.
PG_BEFORE = "'1970-01-01 00:00:00+00'"
SQLITE_SETTLE = "UPDATE outbox SET settled_at = '1970-01-01 00:00:00.000000' WHERE sent_at IS NOT NULL"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        # A constant default fills the column without rewriting the table (PostgreSQL 11+),
        # and dropping it leaves the rows as they are: no long lock on a large outbox.
        op.add_column(
            "outbox",
            sa.Column("settled_at", sa.DateTime(timezone=True), server_default=sa.text(PG_BEFORE)),
        )
        op.alter_column("outbox", "settled_at", server_default=None)
        op.execute("UPDATE outbox SET settled_at = NULL WHERE sent_at IS NULL")
    else:  # SQLite: the embedded default's outbox is small
        op.add_column("outbox", sa.Column("settled_at", sa.DateTime(timezone=True)))
        op.execute(SQLITE_SETTLE)
    op.create_index(
        "ix_outbox_unsettled",
        "outbox",
        ["sent_at"],
        postgresql_where=sa.text(UNSETTLED),
        sqlite_where=sa.text(UNSETTLED),
    )


def downgrade() -> None:
    op.drop_index("ix_outbox_unsettled", table_name="outbox")
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("settled_at")
