"""cases: shared_at, when the destination office began to see the case

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-08

The destination office used to see a case from its registration: the household's names, dates of
birth and contacts, and the history's reasons, of families that had only asked about return, or
were rejected or withdrew before any travel. It now sees a case from the first transition that
shares it (the lifecycle's ``Transition.shares``: book_travel, rebook_travel, receive_handover),
and keeps seeing it whatever happens after. A list of states cannot say this: a case withdrawn,
or back in travel_documents_ready after a cancelled booking, may or may not have been shared.

The cases already there get the time of the first such transition in their history. A case whose
state comes only after a booking but whose history lacks it (rows loaded by hand) counts as
shared since it entered that state. The others stay unshared. The column is nullable without a
default, so adding it rewrites no table; the backfill updates only the shared cases.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

# The lifecycle as it was at this revision, spelled out rather than imported: a migration must
# not change when the code does. The sharing triggers; then every state a case can be in without
# ever having been shared (the final ones included).
BACKFILL_FROM_HISTORY = """
UPDATE cases SET shared_at = (
    SELECT MIN(h.occurred_at) FROM case_history h
    WHERE h.case_id = cases.id AND h.trigger IN ('book_travel', 'rebook_travel', 'receive_handover')
)
WHERE EXISTS (
    SELECT 1 FROM case_history h
    WHERE h.case_id = cases.id AND h.trigger IN ('book_travel', 'rebook_travel', 'receive_handover')
)
"""
BACKFILL_FROM_STATE = """
UPDATE cases SET shared_at = state_entered_at
WHERE shared_at IS NULL AND state NOT IN (
    'inquiry', 'application_submitted', 'return_approved', 'awaiting_travel_documents',
    'travel_documents_ready', 'rejected', 'withdrawn'
)
"""


def upgrade() -> None:
    # A plain ADD COLUMN on both: SQLite's batch mode would rebuild ``cases`` without the
    # case_counts triggers (migration 0007). Neither UPDATE touches state or owner_office, so
    # those triggers do not fire.
    op.add_column("cases", sa.Column("shared_at", sa.DateTime(timezone=True)))
    op.execute(BACKFILL_FROM_HISTORY)
    op.execute(BACKFILL_FROM_STATE)


def downgrade() -> None:
    # SQLite 3.35+ drops a column in place (no rebuild, the triggers stay); PostgreSQL as ever.
    op.execute("ALTER TABLE cases DROP COLUMN shared_at")
