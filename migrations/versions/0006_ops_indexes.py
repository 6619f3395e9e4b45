"""ops: stuck cases are found by state and time of the last transition

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # `avrr ops stuck` and the dashboard: per state, the cases unchanged since before a limit.
    op.create_index("ix_cases_state_updated_at", "cases", ["state", "updated_at"])


def downgrade() -> None:
    op.drop_index("ix_cases_state_updated_at", table_name="cases")
