"""outbox: a case's events in their order

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07

A task's job asks whether an event of its case came between its own and another (the first event
that settles the task after the one that made it; one settling the open tasks before it). On
(case_id) alone PostgreSQL read every event the case ever had for each of those questions (a case
in monitoring for a year has hundreds); on (case_id, id) it reads the few that came after. The new
index answers every look-up by case the old one did, which is dropped.

On PostgreSQL built CONCURRENTLY, outside the migration's transaction, as in 0009, 0011 and 0013.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

NAME, OLD = "ix_outbox_case_events", "ix_outbox_case_id"
INVALID = """
SELECT NOT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
WHERE c.relname = :name AND c.relnamespace = current_schema()::regnamespace
"""


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        op.create_index(NAME, "outbox", ["case_id", "id"])
        op.drop_index(OLD, table_name="outbox")
        return
    with op.get_context().autocommit_block():
        if bind.execute(sa.text(INVALID), {"name": NAME}).scalar():
            op.drop_index(NAME, table_name="outbox", postgresql_concurrently=True)
        op.create_index(NAME, "outbox", ["case_id", "id"], postgresql_concurrently=True, if_not_exists=True)
        op.drop_index(OLD, table_name="outbox", postgresql_concurrently=True, if_exists=True)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        op.create_index(OLD, "outbox", ["case_id"])
        op.drop_index(NAME, table_name="outbox")
        return
    with op.get_context().autocommit_block():
        if op.get_bind().execute(sa.text(INVALID), {"name": OLD}).scalar():
            op.drop_index(OLD, table_name="outbox", postgresql_concurrently=True)
        op.create_index(OLD, "outbox", ["case_id"], postgresql_concurrently=True, if_not_exists=True)
        op.drop_index(NAME, table_name="outbox", postgresql_concurrently=True, if_exists=True)
