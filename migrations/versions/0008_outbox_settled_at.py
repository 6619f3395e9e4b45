"""outbox: settled_at, and the sent rows not yet settled, for the relay's search for lost messages

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06

The rows sent before this migration count as settled: the search starts from now, rather than
reading the whole history of the outbox once.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

UNSETTLED = "sent_at IS NOT NULL AND settled_at IS NULL"


def upgrade() -> None:
    op.add_column("outbox", sa.Column("settled_at", sa.DateTime(timezone=True)))
    op.execute("UPDATE outbox SET settled_at = sent_at WHERE sent_at IS NOT NULL")
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
