"""timers: the index on case_id alone dropped

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07

ix_timers_case_created (case_id, created_at) answers every look-up by case that ix_timers_case_id
(case_id) did, the foreign key's checks included, and every fire that starts or cancels a timer
wrote an entry into both (a monitoring visit cancels one and starts one: two of its fire's index
writes fewer).

On PostgreSQL dropped CONCURRENTLY, outside the migration's transaction, as in 0014.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

NAME = "ix_timers_case_id"
INVALID = """
SELECT NOT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
WHERE c.relname = :name AND c.relnamespace = current_schema()::regnamespace
"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        op.drop_index(NAME, table_name="timers")
        return
    with op.get_context().autocommit_block():
        op.drop_index(NAME, table_name="timers", postgresql_concurrently=True, if_exists=True)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        op.create_index(NAME, "timers", ["case_id"])
        return
    with op.get_context().autocommit_block():
        if bind.execute(sa.text(INVALID), {"name": NAME}).scalar():
            op.drop_index(NAME, table_name="timers", postgresql_concurrently=True)
        op.create_index(NAME, "timers", ["case_id"], postgresql_concurrently=True, if_not_exists=True)
