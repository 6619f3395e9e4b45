"""disbursement requests: request, approve (four eyes) or reject, record the receipt

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

STATUSES = "status IN ('requested', 'approved', 'rejected', 'receipted')"
APPROVAL = "status IN ('requested', 'rejected') OR (disbursed_by IS NOT NULL AND disbursed_at IS NOT NULL)"
# Tranches disbursed in one step before this revision were approved and receipted at once; their
# requester is unknown (none), and their order is the order they were disbursed in.
BACKFILL = """
UPDATE disbursements SET
    status = 'receipted',
    requested_at = disbursed_at,
    position = (
        SELECT count(*) FROM disbursements AS earlier
        WHERE earlier.case_id = disbursements.case_id
          AND (earlier.disbursed_at < disbursements.disbursed_at
               OR (earlier.disbursed_at = disbursements.disbursed_at AND earlier.id < disbursements.id))
    )
"""


def upgrade() -> None:
    with op.batch_alter_table("disbursements", schema=None) as batch_op:
        batch_op.add_column(sa.Column("status", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("position", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("requested_by", sa.String(length=120), nullable=True))
        batch_op.add_column(sa.Column("requested_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("receipt_recorded_by", sa.String(length=120), nullable=True))
        batch_op.add_column(sa.Column("receipt_recorded_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("rejected_by", sa.String(length=120), nullable=True))
        batch_op.add_column(sa.Column("rejected_at", sa.DateTime(timezone=True), nullable=True))

    op.execute(BACKFILL)

    with op.batch_alter_table("disbursements", schema=None) as batch_op:
        batch_op.alter_column("status", existing_type=sa.String(length=16), nullable=False)
        batch_op.alter_column("position", existing_type=sa.Integer(), nullable=False)
        batch_op.alter_column("requested_at", existing_type=sa.DateTime(timezone=True), nullable=False)
        batch_op.alter_column("receipt_ref", existing_type=sa.String(length=120), nullable=True)
        batch_op.alter_column("disbursed_by", existing_type=sa.String(length=120), nullable=True)
        batch_op.alter_column("disbursed_at", existing_type=sa.DateTime(timezone=True), nullable=True)
        batch_op.create_check_constraint(op.f("ck_disbursements_status_known"), STATUSES)
        batch_op.create_check_constraint(op.f("ck_disbursements_approval_recorded"), APPROVAL)
        batch_op.create_check_constraint(
            op.f("ck_disbursements_receipt_recorded"), "status <> 'receipted' OR receipt_ref IS NOT NULL"
        )
        batch_op.create_check_constraint(
            op.f("ck_disbursements_rejection_recorded"), "status <> 'rejected' OR rejected_by IS NOT NULL"
        )
        batch_op.create_check_constraint(op.f("ck_disbursements_four_eyes"), "disbursed_by <> requested_by")
        batch_op.create_unique_constraint(op.f("uq_disbursements_case_id_position"), ["case_id", "position"])


def downgrade() -> None:
    # The one-step table knows only tranches that moved money: requests that never did go, and an
    # approved tranche still waiting for its receipt keeps an empty reference.
    op.execute("DELETE FROM disbursements WHERE status IN ('requested', 'rejected')")
    op.execute("UPDATE disbursements SET receipt_ref = '' WHERE receipt_ref IS NULL")
    with op.batch_alter_table("disbursements", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("uq_disbursements_case_id_position"), type_="unique")
        batch_op.drop_constraint(op.f("ck_disbursements_four_eyes"), type_="check")
        batch_op.drop_constraint(op.f("ck_disbursements_rejection_recorded"), type_="check")
        batch_op.drop_constraint(op.f("ck_disbursements_receipt_recorded"), type_="check")
        batch_op.drop_constraint(op.f("ck_disbursements_approval_recorded"), type_="check")
        batch_op.drop_constraint(op.f("ck_disbursements_status_known"), type_="check")
        batch_op.alter_column("disbursed_at", existing_type=sa.DateTime(timezone=True), nullable=False)
        batch_op.alter_column("disbursed_by", existing_type=sa.String(length=120), nullable=False)
        batch_op.alter_column("receipt_ref", existing_type=sa.String(length=120), nullable=False)
        batch_op.drop_column("rejected_at")
        batch_op.drop_column("rejected_by")
        batch_op.drop_column("receipt_recorded_at")
        batch_op.drop_column("receipt_recorded_by")
        batch_op.drop_column("requested_at")
        batch_op.drop_column("requested_by")
        batch_op.drop_column("position")
        batch_op.drop_column("status")
