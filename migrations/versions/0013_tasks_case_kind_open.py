"""tasks: a case's open tasks of a kind

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07

A monitoring visit's task replaces the open one the last visit asked for (marked done in the same
statement), and an event that does a task's work or ends the case settles the case's open tasks of
a kind. Both look for a case's open tasks of a kind: this partial index holds only open tasks, so
the look does not read every task the case ever had.

On PostgreSQL built CONCURRENTLY, outside the migration's transaction, as in 0009 and 0011.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

NAME = "ix_tasks_case_kind_open"
WHERE = sa.text("status = 'open'")
INVALID = """
SELECT NOT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
WHERE c.relname = :name AND c.relnamespace = current_schema()::regnamespace
"""


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        op.create_index(NAME, "tasks", ["case_id", "kind"], sqlite_where=WHERE)
        return
    with op.get_context().autocommit_block():
        if bind.execute(sa.text(INVALID), {"name": NAME}).scalar():
            op.drop_index(NAME, table_name="tasks", postgresql_concurrently=True)
        op.create_index(
            NAME,
            "tasks",
            ["case_id", "kind"],
            postgresql_where=WHERE,
            postgresql_concurrently=True,
            if_not_exists=True,
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        op.drop_index(NAME, table_name="tasks")
        return
    with op.get_context().autocommit_block():
        op.drop_index(NAME, table_name="tasks", postgresql_concurrently=True, if_exists=True)
