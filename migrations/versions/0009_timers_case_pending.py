"""timers: a case's pending timers by an index of their own

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06

A case keeps every timer it ever had: each monitoring visit or rebooking cancels one and starts
one. The transition's cancel (case, state, pending) and the workers' facts read (a case's
pending due dates) went through ix_timers_case_id and read that whole history: with a few
thousand timers on a case, the facts read took 0.53 ms of execution, 0.09 ms with this index,
and a monitoring visit's client CPU fell from 1.72 to 1.57 ms. Pending timers are few, so the
partial index stays small.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

PENDING = "status = 'pending'"


def upgrade() -> None:
    op.create_index(
        "ix_timers_case_pending",
        "timers",
        ["case_id"],
        postgresql_where=sa.text(PENDING),
        sqlite_where=sa.text(PENDING),
    )


def downgrade() -> None:
    op.drop_index("ix_timers_case_pending", table_name="timers")
