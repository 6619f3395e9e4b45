"""Loads and saves the case aggregate with SQLAlchemy Core, change by change."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, RowMapping, bindparam, exists, insert, select, update

from workflow.adapters import tables as tb
from workflow.adapters.batch import Batch
from workflow.adapters.change_writers import WRITERS
from workflow.adapters.db import execute_fixed
from workflow.adapters.queries import plausible_id
from workflow.domain.case import Case
from workflow.domain.errors import VersionConflict
from workflow.domain.money import Money
from workflow.domain.plan import BudgetLine, Disbursement, Plan
from workflow.domain.records import Eligibility, HouseholdMember

# Columns of ``cases`` that a transition may change, read from the aggregate as-is.
_PLAIN = (
    "state",
    "version",
    "owner_office",
    "destination_office",  # redirect_handover changes it
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
    "shared_at",
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
# A deadline's fire locks the row before it takes its timer: the order a caseworker's move takes
# them in (the case's UPDATE, then its timers), so the two wait for each other, never deadlock.
_SELECT_CASE_LOCKED = _SELECT_CASE.with_for_update()
_UPDATE_CASE = update(tb.cases).where(
    tb.cases.c.id == bindparam("_id"), tb.cases.c.version == bindparam("_expected")
)
_SELECT_DISBURSEMENTS = (
    select(tb.disbursements)
    .where(tb.disbursements.c.case_id == bindparam("_case"))
    .order_by(tb.disbursements.c.position)
)


class SqlCaseRepository:
    def __init__(self, conn: Connection | Batch) -> None:
        # A unit of work's Batch: the UPDATE and the changes' writes go with the fire's others.
        self._conn = conn if isinstance(conn, Batch) else Batch(conn)
        # The columns of each case as get() read them: update() writes only what changed (the
        # version check stands for the rest: no one else writes a case's row).
        self._read: dict[str, dict[str, Any]] = {}

    def get(self, case_id: str, lock: bool = False) -> Case | None:
        if not plausible_id(case_id):  # cannot exist; PostgreSQL would refuse the comparison
            return None
        query = _SELECT_CASE_LOCKED if lock else _SELECT_CASE
        conn = self._conn.connection() if lock else self._conn.reader()  # a lock needs a transaction
        row = execute_fixed(conn, query, {"_id": case_id}).mappings().first()
        if row is None:
            return None
        case = _to_case(row)
        self._read[case.id] = {name: row[name] for name in (*_PLAIN, *_ELIGIBILITY)}  # the row's own
        return case

    def load_parts(self, case: Case, parts: Iterable[str]) -> None:
        if "members" in parts:
            case.members = self.members(case.id)
        if "plan" in parts:
            case.plan = self._plan(case.id)

    def members(self, case_id: str) -> list[HouseholdMember]:
        m = tb.household_members.c
        rows = self._conn.reader().execute(
            select(m.id, m.full_name, m.date_of_birth, m.relationship, m.phone, m.email)
            .where(m.case_id == case_id)
            .order_by(m.position)
        )
        return [HouseholdMember(*row) for row in rows]

    def office_exists(self, code: str) -> bool:
        return bool(self._conn.reader().scalar(select(exists().where(tb.offices.c.code == code))))

    def add(self, case: Case, now: datetime) -> None:
        values = _columns(case) | {"updated_at": now, "state_entered_at": case.state_entered_at or now}
        values.update(
            id=case.id,
            lifecycle_version=case.lifecycle_version,
            origin_office=case.origin_office,
            created_at=now,
        )
        self._conn.connection().execute(insert(tb.cases), values)
        self._persist(case)

    def update(self, case: Case, now: datetime) -> None:
        expected = case.version - 1
        columns = _columns(case)
        if (read := self._read.get(case.id)) is not None:  # what changed: fewer parameters to send
            columns = {name: value for name, value in columns.items() if read.get(name, _UNREAD) != value}
        params = columns | {
            "version": case.version,
            "updated_at": now,
            "state_entered_at": case.state_entered_at or now,
            "_id": case.id,
            "_expected": expected,
        }

        def moved_on() -> None:
            actual = self._conn.reader().scalar(select(tb.cases.c.version).where(tb.cases.c.id == case.id))
            raise VersionConflict(case.id, expected, actual)

        # Sent with the fire's other writes (Batch): a conflict is raised then, before the commit.
        self._conn.defer(_UPDATE_CASE, params, on_none=moved_on)
        self._read[case.id] = _columns(case)  # what the row holds once the UPDATE is made
        self._persist(case)

    def _persist(self, case: Case) -> None:
        for change in case.changes:
            WRITERS[type(change)](self._conn, case.id, change)
        case.changes.clear()

    def _plan(self, case_id: str) -> Plan | None:
        row = (
            self._conn.reader()
            .execute(select(tb.plans).where(tb.plans.c.case_id == case_id))
            .mappings()
            .first()
        )
        if row is None:
            return None
        lines = (
            self._conn.reader()
            .execute(
                select(tb.budget_lines)
                .where(tb.budget_lines.c.plan_id == row["id"])
                .order_by(tb.budget_lines.c.position)
            )
            .mappings()
        )
        return Plan(
            row["id"],
            row["currency"],
            row["drafted_by"],
            row["drafted_at"],
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
            row["approved_at"],
            self._disbursements(case_id),
        )

    def _disbursements(self, case_id: str) -> list[Disbursement]:
        rows = self._conn.reader().execute(_SELECT_DISBURSEMENTS, {"_case": case_id}).mappings()
        return [
            Disbursement(
                r["id"],
                r["budget_line_id"],
                Money.from_minor(r["amount_minor"], r["currency"]),
                r["kind"],
                r["vendor"],
                r["requested_by"],
                r["requested_at"],
                r["position"],
                r["status"],
                # The columns predate requests: the one who disbursed is the one who approved.
                r["disbursed_by"],
                r["disbursed_at"],
                r["receipt_ref"],
                r["receipt_recorded_by"],
                r["receipt_recorded_at"],
                r["rejected_by"],
                r["rejected_at"],
            )
            for r in rows
        ]


_UNREAD = object()


def _columns(case: Case) -> dict[str, Any]:
    """The columns of ``cases`` a transition may change, from the aggregate."""
    values = {name: getattr(case, name) for name in _PLAIN}
    e = case.eligibility
    values.update({name: getattr(e, name) if e else None for name in _ELIGIBILITY})
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
        state_entered_at=row["state_entered_at"],
        **{
            name: row[name]
            for name in _PLAIN
            if name not in ("state", "version", "owner_office", "destination_office", "language", "channel")
        },
    )
    if row["nationality"] is not None:
        case.eligibility = Eligibility(**{name: row[name] for name in _ELIGIBILITY})
    return case
