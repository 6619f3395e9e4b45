"""Writes each kind of change a transition records, one function per change type."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from workflow.adapters import tables as tb
from workflow.adapters.batch import Batch
from workflow.domain import changes as ch
from workflow.domain.errors import BudgetExceeded

# The database refuses overspending: the increment is evaluated under the row lock.
_SPEND = (
    update(tb.budget_lines)
    .where(tb.budget_lines.c.id == bindparam("_line"))
    .values(disbursed_minor=tb.budget_lines.c.disbursed_minor + bindparam("_amount"))
)
# Built once, like the repository's: a statement built per call costs its construction and its
# cache key on every transition, more than the client's share of running it (bench/pipeline.py).
_INSERT_MEMBERS = insert(tb.household_members)
_INSERT_PLAN = insert(tb.plans)
_INSERT_LINES = insert(tb.budget_lines)
_INSERT_DISBURSEMENT = insert(tb.disbursements)
_INSERT_CONTRIBUTION = insert(tb.contributions)
_INSERT_VISIT = insert(tb.monitoring_visits)
_INSERT_TIMER = insert(tb.timers)
_DROP_LINES = delete(tb.budget_lines).where(
    tb.budget_lines.c.plan_id
    == select(tb.plans.c.id).where(tb.plans.c.case_id == bindparam("_case")).scalar_subquery()
)
_DROP_PLAN = delete(tb.plans).where(tb.plans.c.case_id == bindparam("_case"))
_APPROVE_PLAN = update(tb.plans).where(tb.plans.c.id == bindparam("_plan"))
# The columns to set come from the parameters' names (the status, its stamps, a receipt).
_SET_DISBURSEMENT = update(tb.disbursements).where(
    tb.disbursements.c.id == bindparam("_id"), tb.disbursements.c.status == bindparam("_old")
)
_CANCEL_TIMERS = (
    update(tb.timers)
    .where(
        tb.timers.c.case_id == bindparam("_case"),
        tb.timers.c.state == bindparam("_state"),
        tb.timers.c.status == tb.PENDING,  # a literal: ix_timers_case_pending
    )
    .values(status="cancelled")
)


def _members_added(conn: Batch, case_id: str, change: ch.MembersAdded) -> None:
    conn.defer(
        _INSERT_MEMBERS,
        [
            {
                "id": m.id,
                "case_id": case_id,
                "position": i,
                "full_name": m.full_name,
                "date_of_birth": m.date_of_birth,
                "relationship": m.relationship,
                "phone": m.phone,
                "email": m.email,
            }
            for i, m in enumerate(change.members)
        ],
    )


def _household_replaced(conn: Batch, case_id: str, change: ch.HouseholdReplaced) -> None:
    conn.connection().execute(delete(tb.household_members).where(tb.household_members.c.case_id == case_id))
    _members_added(conn, case_id, ch.MembersAdded(change.members))


def _plan_drafted(conn: Batch, case_id: str, change: ch.PlanDrafted) -> None:
    conn.connection().execute(_DROP_LINES, {"_case": case_id})
    conn.connection().execute(_DROP_PLAN, {"_case": case_id})
    plan = change.plan
    conn.connection().execute(
        _INSERT_PLAN,
        {
            "id": plan.id,
            "case_id": case_id,
            "currency": plan.currency,
            "drafted_by": plan.drafted_by,
            "drafted_at": plan.drafted_at,
        },
    )
    conn.connection().execute(
        _INSERT_LINES,
        [
            {
                "id": line.id,
                "plan_id": plan.id,
                "position": position,
                "case_id": case_id,
                "member_id": line.member_id,
                "category": line.category,
                "currency": line.allocated.currency,
                "allocated_minor": line.allocated.to_minor(),
                "disbursed_minor": 0,
                "purpose": line.purpose,
            }
            for position, line in enumerate(plan.lines)
        ],
    )


def _plan_approved(conn: Batch, case_id: str, change: ch.PlanApproved) -> None:
    conn.connection().execute(
        _APPROVE_PLAN,
        {"_plan": change.plan_id, "approved_by": change.approved_by, "approved_at": change.approved_at},
    )


def _disbursement_requested(conn: Batch, case_id: str, change: ch.DisbursementRequested) -> None:
    d = change.disbursement
    conn.defer(
        _INSERT_DISBURSEMENT,
        {
            "id": d.id,
            "case_id": case_id,
            "budget_line_id": d.budget_line_id,
            "amount_minor": d.amount.to_minor(),
            "currency": d.amount.currency,
            "kind": d.kind,
            "vendor": d.vendor,
            "status": d.status,
            "position": d.position,
            "requested_by": d.requested_by,
            "requested_at": d.requested_at,
        },
    )


def _disbursed(conn: Batch, case_id: str, change: ch.Disbursed) -> None:
    connection = conn.connection()  # the held writes first: their errors are not this one's
    try:
        connection.execute(_SPEND, {"_line": change.budget_line_id, "_amount": change.amount.to_minor()})
    except IntegrityError as exc:
        if "within_allocation" in str(exc.orig):
            raise BudgetExceeded("the disbursement would overspend the member's budget line") from None
        raise
    _set_status(conn, change.disbursement_id, "requested", "approved", change.approved_by, change.approved_at)


def _disbursement_rejected(conn: Batch, case_id: str, change: ch.DisbursementRejected) -> None:
    _set_status(conn, change.disbursement_id, "requested", "rejected", change.rejected_by, change.rejected_at)


def _receipt_recorded(conn: Batch, case_id: str, change: ch.ReceiptRecorded) -> None:
    _set_status(
        conn,
        change.disbursement_id,
        "approved",
        "receipted",
        change.recorded_by,
        change.recorded_at,
        receipt_ref=change.receipt_ref,
    )


# Who moved a disbursement into each status, and when.
_STAMPS = {
    "approved": ("disbursed_by", "disbursed_at"),
    "rejected": ("rejected_by", "rejected_at"),
    "receipted": ("receipt_recorded_by", "receipt_recorded_at"),
}


def _set_status(
    conn: Batch, disbursement_id: str, old: str, new: str, actor_id: str, at: datetime, **values: Any
) -> None:
    by, when = _STAMPS[new]
    params = {"_id": disbursement_id, "_old": old, "status": new, by: actor_id, when: at, **values}
    done = conn.connection().execute(_SET_DISBURSEMENT, params)
    # The case's version check already serialises fires; a miss here is a bug, not a race.
    if done.rowcount != 1:
        raise RuntimeError(f"disbursement {disbursement_id} was not {old}")


def _contribution(conn: Batch, case_id: str, change: ch.ContributionRecorded) -> None:
    c = change.contribution
    conn.defer(
        _INSERT_CONTRIBUTION,
        {
            "id": c.id,
            "case_id": case_id,
            "amount_minor": c.amount.to_minor(),
            "currency": c.amount.currency,
            "purpose": c.purpose,
            "recorded_by": c.recorded_by,
            "recorded_at": c.recorded_at,
        },
    )


def _visit(conn: Batch, case_id: str, change: ch.VisitRecorded) -> None:
    v = change.visit
    conn.defer(
        _INSERT_VISIT,
        {
            "id": v.id,
            "case_id": case_id,
            "visited_on": v.visited_on,
            "kind": v.kind,
            "plan_on_track": v.plan_on_track,
            "notes": v.notes,
            "recorded_by": v.recorded_by,
        },
    )


def _timer_started(conn: Batch, case_id: str, change: ch.TimerStarted) -> None:
    t = change.timer
    conn.defer(
        _INSERT_TIMER,
        {
            "id": t.id,
            "case_id": case_id,
            "name": t.name,
            "state": t.state,
            "due_at": t.due_at,
            "fires_trigger": t.fires_trigger,
            "status": "pending",
            "created_at": t.created_at,
        },
    )


def _timers_cancelled(conn: Batch, case_id: str, change: ch.TimersCancelled) -> None:
    conn.defer(_CANCEL_TIMERS, {"_case": case_id, "_state": change.state})


WRITERS: dict[type, Any] = {
    ch.MembersAdded: _members_added,
    ch.HouseholdReplaced: _household_replaced,
    ch.PlanDrafted: _plan_drafted,
    ch.PlanApproved: _plan_approved,
    ch.DisbursementRequested: _disbursement_requested,
    ch.Disbursed: _disbursed,
    ch.DisbursementRejected: _disbursement_rejected,
    ch.ReceiptRecorded: _receipt_recorded,
    ch.ContributionRecorded: _contribution,
    ch.VisitRecorded: _visit,
    ch.TimerStarted: _timer_started,
    ch.TimersCancelled: _timers_cancelled,
}
