"""Read models of a case's grants: the plan's budgets, the disbursements, the family's own money."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Engine, select

from workflow.adapters import tables as tb
from workflow.adapters.repository import SqlCaseRepository
from workflow.domain.actors import Actor
from workflow.domain.case import Case
from workflow.domain.errors import UnknownCase
from workflow.domain.machine import can_see
from workflow.domain.money import CURRENCY_EXPONENTS, Money
from workflow.domain.plan import BudgetLine, Disbursement, Plan


class GrantViews:
    def __init__(self, db: Engine) -> None:
        self._db = db

    def plan(self, case_id: str, actor: Actor) -> dict[str, Any] | None:
        """The plan with each budget line (a member and a category) and each member's totals;
        None while the case has no plan."""
        with self._db.connect() as conn:
            case = _visible(conn, case_id, actor, ("members", "plan"))
        if case.plan is None:
            return None
        plan = case.plan
        relationship = {m.id: m.relationship for m in case.members or ()}
        lines = [
            {
                "id": line.id,
                "member_id": line.member_id,
                "category": line.category,
                "purpose": line.purpose,
                **_sums(plan, [line]),
            }
            for line in plan.lines
        ]
        members = [
            {
                "member_id": member,
                "relationship": relationship.get(member),
                **_sums(plan, [line for line in plan.lines if line.member_id == member]),
            }
            for member in dict.fromkeys(line.member_id for line in plan.lines)
        ]
        return {
            "id": plan.id,
            "currency": plan.currency,
            "drafted_by": plan.drafted_by,
            "drafted_at": _iso(plan.drafted_at),
            "approved_by": plan.approved_by,
            "approved_at": _iso(plan.approved_at),
            "lines": lines,
            "members": members,
            "total": _sums(plan, plan.lines),
        }

    def disbursements(self, case_id: str, actor: Actor) -> list[dict[str, Any]]:
        """Every disbursement in the order it was requested, with who did what and when."""
        with self._db.connect() as conn:
            case = _visible(conn, case_id, actor, ("plan",))
        if case.plan is None:
            return []
        return [_disbursement(d, case.plan.line(d.budget_line_id)) for d in case.plan.disbursements]

    def contributions(self, case_id: str, actor: Actor) -> list[dict[str, Any]]:
        """The family's own money: recorded beside the plan, never counted as grant."""
        c = tb.contributions.c
        with self._db.connect() as conn:
            _visible(conn, case_id, actor, ())
            rows = conn.execute(
                select(c.id, c.amount_minor, c.currency, c.purpose, c.recorded_by, c.recorded_at)
                .where(c.case_id == case_id)
                .order_by(c.recorded_at, c.id)
            ).all()
        return [
            {
                "id": r.id,
                "amount": _amount(Money.from_minor(r.amount_minor, r.currency)),
                "currency": r.currency,
                "purpose": r.purpose,
                "recorded_by": r.recorded_by,
                "recorded_at": _iso(r.recorded_at),
            }
            for r in rows
        ]


def _visible(conn: Connection, case_id: str, actor: Actor, parts: tuple[str, ...]) -> Case:
    """Another office's case is unknown to the caller, so ids cannot be probed."""
    repo = SqlCaseRepository(conn)
    case = repo.get(case_id)
    if case is None or not can_see(case, actor):
        raise UnknownCase(case_id)
    repo.load_parts(case, parts)
    return case


def _sums(plan: Plan, lines: list[BudgetLine]) -> dict[str, str]:
    """Remaining is what may still be requested: neither disbursed nor awaiting approval."""

    def total(amounts: list[Money]) -> str:
        return _amount(Money(sum((m.amount for m in amounts), Decimal(0)), plan.currency))

    return {
        "allocated": total([line.allocated for line in lines]),
        "requested": total([plan.requested(line) for line in lines]),
        "disbursed": total([line.disbursed for line in lines]),
        "remaining": total([plan.available(line) for line in lines]),
    }


def _disbursement(d: Disbursement, line: BudgetLine | None) -> dict[str, Any]:
    return {
        "id": d.id,
        "position": d.position,
        "budget_line_id": d.budget_line_id,
        "member_id": line.member_id if line else None,
        "category": line.category if line else None,
        "amount": _amount(d.amount),
        "currency": d.amount.currency,
        "kind": d.kind,
        "vendor": d.vendor,
        "status": d.status,
        "requested_by": d.requested_by,
        "requested_at": _iso(d.requested_at),
        "approved_by": d.approved_by,
        "approved_at": _iso(d.approved_at),
        "receipt_ref": d.receipt_ref,
        "receipt_recorded_by": d.receipt_recorded_by,
        "receipt_recorded_at": _iso(d.receipt_recorded_at),
        "rejected_by": d.rejected_by,
        "rejected_at": _iso(d.rejected_at),
    }


def _amount(money: Money) -> str:
    return f"{money.amount:.{CURRENCY_EXPONENTS[money.currency]}f}"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
