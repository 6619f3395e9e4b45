"""tasks: who completed a task

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07

Tasks were made by the workers and cancelled when a journey was called off, but no one could
complete one: the API now lists an office's tasks and lets its staff complete them
(`POST /tasks/{task_id}/complete`), recording who did, beside `completed_at`.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("completed_by", sa.String(120), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("completed_by")
