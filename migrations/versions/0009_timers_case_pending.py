"""timers: a case's pending timers by an index of their own

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06

A case keeps every timer it ever had: each monitoring visit or rebooking cancels one and starts
one. The transition's cancel (case, state, pending) and the workers' facts read (a case's
pending due dates) went through ix_timers_case_id and read that whole history: with a few
thousand timers on a case, the facts read took 0.53 ms of execution, 0.09 ms with this index,
and a monitoring visit's client CPU fell from 1.72 to 1.57 ms. Pending timers are few, so the
partial index stays small. Both statements compare status with a literal (tables.PENDING), so a
prepared statement's generic plan uses it too.

On PostgreSQL the index is built CONCURRENTLY, outside the migration's transaction: transitions
and beat go on writing timers while it builds. A build that failed leaves an invalid index
behind; the next upgrade drops it and builds again.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

NAME = "ix_timers_case_pending"
PENDING = "status = 'pending'"
INVALID = """
SELECT NOT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
WHERE c.relname = :name AND c.relnamespace = current_schema()::regnamespace
"""


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        op.create_index(NAME, "timers", ["case_id"], sqlite_where=sa.text(PENDING))
        return
    with op.get_context().autocommit_block():
        if bind.execute(sa.text(INVALID), {"name": NAME}).scalar():
            op.drop_index(NAME, table_name="timers", postgresql_concurrently=True)
        op.create_index(
            NAME,
            "timers",
            ["case_id"],
            postgresql_where=sa.text(PENDING),
            postgresql_concurrently=True,
            if_not_exists=True,
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        op.drop_index(NAME, table_name="timers")
        return
    with op.get_context().autocommit_block():
        op.drop_index(NAME, table_name="timers", postgresql_concurrently=True, if_exists=True)
