"""timers: a case's timers by when they were started and when they fired

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07

A notice's deadline is read as of its event: the timer the event's transition started (created_at
is the fire's clock reading, which the event shares) or, for an escalation, the timer that fired
it (fired_at, likewise). Before, the facts read took the case's pending timers, which named the
re-armed deadline in an escalation and none where the state has no timer. These indexes find
those timers without reading the case's whole timer history (see 0009).

On PostgreSQL each is built CONCURRENTLY, outside the migration's transaction, as in 0009.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

INDEXES = {"ix_timers_case_created": "created_at", "ix_timers_case_fired": "fired_at"}
# Most timers never fire (a move cancels them): the fired ones' index holds only those. A query's
# `fired_at = ...` implies the condition, so both databases use it, prepared statements too.
WHERE = {"ix_timers_case_fired": sa.text("fired_at IS NOT NULL")}
INVALID = """
SELECT NOT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
WHERE c.relname = :name AND c.relnamespace = current_schema()::regnamespace
"""


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        for name, column in INDEXES.items():
            op.create_index(name, "timers", ["case_id", column], sqlite_where=WHERE.get(name))
        return
    with op.get_context().autocommit_block():
        for name, column in INDEXES.items():
            if bind.execute(sa.text(INVALID), {"name": name}).scalar():
                op.drop_index(name, table_name="timers", postgresql_concurrently=True)
            op.create_index(
                name,
                "timers",
                ["case_id", column],
                postgresql_where=WHERE.get(name),
                postgresql_concurrently=True,
                if_not_exists=True,
            )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        for name in INDEXES:
            op.drop_index(name, table_name="timers")
        return
    with op.get_context().autocommit_block():
        for name in INDEXES:
            op.drop_index(name, table_name="timers", postgresql_concurrently=True, if_exists=True)
