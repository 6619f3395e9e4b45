"""Loads and saves the case aggregate with SQLAlchemy Core, change by change."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, RowMapping, bindparam, delete, exists, insert, select, update
from sqlalchemy.exc import IntegrityError

from workflow.adapters import tables as tb
from workflow.domain import changes as ch
from workflow.domain.case import Case
from workflow.domain.errors import BudgetExceeded, VersionConflict
from workflow.domain.money import Money
from workflow.domain.plan import BudgetLine, Plan
from workflow.domain.records import Eligibility, HouseholdMember

# Columns of ``cases`` that a transition may change, read from the aggregate as-is.
_PLAIN = (
    "state",
    "version",
    "owner_office",
    "language",
    "channel",
    "document_kind",
    "departure_on",
    "route",
    "carrier",
    "arrived_on",
    "last_contact_on",
    "last_visit_on",
    "outcome",
)
_ELIGIBILITY = (
    "nationality",
    "expulsion_order",
    "consent_signed_on",
    "travel_document",
    "asylum_status",
    "return_chosen_while_pending",
)

# Built once: constructing and cache-keying a statement per call costs more than running it.
_SELECT_CASE = select(tb.cases).where(tb.cases.c.id == bindparam("_id"))
_UPDATE_CASE = update(tb.cases).where(
    tb.cases.c.id == bindparam("_id"), tb.cases.c.version == bindparam("_expected")
)
_SPEND = (
    update(tb.budget_lines)
    .where(tb.budget_lines.c.id == bindparam("_line"))
    .values(disbursed_minor=tb.budget_lines.c.disbursed_minor + bindparam("_amount"))
)


def utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything in the engine is UTC-aware."""
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


class SqlCaseRepository:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def get(self, case_id: str) -> Case | None:
        row = self._conn.execute(_SELECT_CASE, {"_id": case_id}).mappings().first()
        return _to_case(row) if row else None

    def load_parts(self, case: Case, parts: Iterable[str]) -> None:
        if "members" in parts:
            case.members = self.members(case.id)
        if "plan" in parts:
            case.plan = self._plan(case.id)

    def members(self, case_id: str) -> list[HouseholdMember]:
        m = tb.household_members.c
        rows = self._conn.execute(
            select(m.id, m.full_name, m.date_of_birth, m.relationship, m.phone, m.email)
            .where(m.case_id == case_id)
            .order_by(m.position)
        )
        return [HouseholdMember(*row) for row in rows]

    def office_exists(self, code: str) -> bool:
        return bool(self._conn.scalar(select(exists().where(tb.offices.c.code == code))))

    def add(self, case: Case, now: datetime) -> None:
        values = _row(case, now)
        values.update(
            id=case.id,
            lifecycle_version=case.lifecycle_version,
            origin_office=case.origin_office,
            destination_office=case.destination_office,
            created_at=now,
        )
        self._conn.execute(insert(tb.cases), values)
        self._persist(case)

    def update(self, case: Case, now: datetime) -> None:
        expected = case.version - 1
        params = _row(case, now) | {"_id": case.id, "_expected": expected}
        if self._conn.execute(_UPDATE_CASE, params).rowcount != 1:
            actual = self._conn.scalar(select(tb.cases.c.version).where(tb.cases.c.id == case.id))
            raise VersionConflict(case.id, expected, actual)
        self._persist(case)

    def _persist(self, case: Case) -> None:
        for change in case.changes:
            _WRITERS[type(change)](self._conn, case.id, change)
        case.changes.clear()

    def _plan(self, case_id: str) -> Plan | None:
        row = self._conn.execute(select(tb.plans).where(tb.plans.c.case_id == case_id)).mappings().first()
        if row is None:
            return None
        lines = self._conn.execute(
            select(tb.budget_lines)
            .where(tb.budget_lines.c.plan_id == row["id"])
            .order_by(tb.budget_lines.c.position)
        ).mappings()
        return Plan(
            row["id"],
            row["currency"],
            row["drafted_by"],
            utc(row["drafted_at"]),  # type: ignore[arg-type]
            [
                BudgetLine(
                    r["id"],
                    r["member_id"],
                    r["category"],
                    Money.from_minor(r["allocated_minor"], r["currency"]),
                    Money.from_minor(r["disbursed_minor"], r["currency"]),
                    r["purpose"],
                )
                for r in lines
            ],
            row["approved_by"],
            utc(row["approved_at"]),
        )


def _row(case: Case, now: datetime) -> dict[str, Any]:
    values = {name: getattr(case, name) for name in _PLAIN}
    e = case.eligibility
    values.update({name: getattr(e, name) if e else None for name in _ELIGIBILITY})
    values.update(updated_at=now, state_entered_at=case.state_entered_at or now)
    return values


def _to_case(row: RowMapping) -> Case:
    case = Case(
        id=row["id"],
        lifecycle_version=row["lifecycle_version"],
        origin_office=row["origin_office"],
        destination_office=row["destination_office"],
        owner_office=row["owner_office"],
        language=row["language"],
        channel=row["channel"],
        _state=row["state"],
        version=row["version"],
        state_entered_at=utc(row["state_entered_at"]),
        **{
            name: row[name]
            for name in _PLAIN
            if name not in ("state", "version", "owner_office", "language", "channel")
        },
    )
    if row["nationality"] is not None:
        case.eligibility = Eligibility(**{name: row[name] for name in _ELIGIBILITY})
    return case


def _members_added(conn: Connection, case_id: str, change: ch.MembersAdded) -> None:
    conn.execute(
        insert(tb.household_members),
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


def _plan_drafted(conn: Connection, case_id: str, change: ch.PlanDrafted) -> None:
    old = select(tb.plans.c.id).where(tb.plans.c.case_id == case_id).scalar_subquery()
    conn.execute(delete(tb.budget_lines).where(tb.budget_lines.c.plan_id == old))
    conn.execute(delete(tb.plans).where(tb.plans.c.case_id == case_id))
    plan = change.plan
    conn.execute(
        insert(tb.plans),
        {
            "id": plan.id,
            "case_id": case_id,
            "currency": plan.currency,
            "drafted_by": plan.drafted_by,
            "drafted_at": plan.drafted_at,
        },
    )
    conn.execute(
        insert(tb.budget_lines),
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


def _plan_approved(conn: Connection, case_id: str, change: ch.PlanApproved) -> None:
    conn.execute(
        update(tb.plans)
        .where(tb.plans.c.id == change.plan_id)
        .values(approved_by=change.approved_by, approved_at=change.approved_at)
    )


def _disbursed(conn: Connection, case_id: str, change: ch.Disbursed) -> None:
    d = change.disbursement
    try:
        conn.execute(_SPEND, {"_line": d.budget_line_id, "_amount": d.amount.to_minor()})
    except IntegrityError as exc:
        if "within_allocation" in str(exc.orig):
            raise BudgetExceeded("the disbursement would overspend the member's budget line") from None
        raise
    conn.execute(
        insert(tb.disbursements),
        {
            "id": d.id,
            "case_id": case_id,
            "budget_line_id": d.budget_line_id,
            "amount_minor": d.amount.to_minor(),
            "currency": d.amount.currency,
            "kind": d.kind,
            "vendor": d.vendor,
            "receipt_ref": d.receipt_ref,
            "disbursed_by": d.disbursed_by,
            "disbursed_at": d.disbursed_at,
        },
    )


def _contribution(conn: Connection, case_id: str, change: ch.ContributionRecorded) -> None:
    c = change.contribution
    conn.execute(
        insert(tb.contributions),
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


def _visit(conn: Connection, case_id: str, change: ch.VisitRecorded) -> None:
    v = change.visit
    conn.execute(
        insert(tb.monitoring_visits),
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


def _timer_started(conn: Connection, case_id: str, change: ch.TimerStarted) -> None:
    t = change.timer
    conn.execute(
        insert(tb.timers),
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


def _timers_cancelled(conn: Connection, case_id: str, change: ch.TimersCancelled) -> None:
    c = tb.timers.c
    conn.execute(
        update(tb.timers)
        .where(c.case_id == case_id, c.state == change.state, c.status == "pending")
        .values(status="cancelled")
    )


_WRITERS: dict[type, Any] = {
    ch.MembersAdded: _members_added,
    ch.PlanDrafted: _plan_drafted,
    ch.PlanApproved: _plan_approved,
    ch.Disbursed: _disbursed,
    ch.ContributionRecorded: _contribution,
    ch.VisitRecorded: _visit,
    ch.TimerStarted: _timer_started,
    ch.TimersCancelled: _timers_cancelled,
}
