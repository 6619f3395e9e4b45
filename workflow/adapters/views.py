"""Read models for the CLI and (later) the API: plain dicts, no personal data beyond what staff need."""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlalchemy import Connection, Engine, insert, select

from workflow.adapters import tables as tb
from workflow.adapters.db import writing
from workflow.adapters.inbound import SqlInboundStore
from workflow.adapters.repository import SqlCaseRepository
from workflow.adapters.stores import SqlHistoryLog
from workflow.domain.actors import Actor
from workflow.domain.case import Case
from workflow.domain.errors import UnknownCase
from workflow.domain.machine import PACKAGE_STATES, can_see, machine_for
from workflow.domain.money import Money


def _age(born: date, today: date) -> int:
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day))


class CaseViews:
    def __init__(self, db: Engine) -> None:
        self._db = db

    def case(self, case_id: str, actor: Actor | None = None) -> dict[str, Any]:
        """The case as staff see it; with an ``actor``, only if that actor may see it (another
        office's case is unknown to it), and with the triggers that actor may fire now."""
        with self._db.connect() as conn:
            repo = SqlCaseRepository(conn)
            case = repo.get(case_id)
            if case is None or (actor is not None and not can_see(case, actor)):
                raise UnknownCase(case_id)
            repo.load_parts(case, ("members", "plan"))
            today = date.today()
            t = tb.timers.c
            timers = conn.execute(
                select(t.name, t.due_at, t.fires_trigger)
                .where(t.case_id == case_id, t.status == "pending")
                .order_by(t.due_at)
            ).mappings()
            return {
                "id": case.id,
                "state": case.state,
                "version": case.version,
                "lifecycle_version": case.lifecycle_version,
                "origin_office": case.origin_office,
                "destination_office": case.destination_office,
                "owner_office": case.owner_office,
                "language": case.language,
                "outcome": case.outcome,
                "members": [
                    {"id": m.id, "relationship": m.relationship, "age": _age(m.date_of_birth, today)}
                    for m in case.members or ()
                ],
                "plan": None
                if case.plan is None
                else {
                    "id": case.plan.id,
                    "currency": case.plan.currency,
                    "approved_by": case.plan.approved_by,
                    "lines": [
                        {
                            "id": line.id,
                            "member_id": line.member_id,
                            "category": line.category,
                            "allocated": str(line.allocated),
                            "requested": str(case.plan.requested(line)),
                            "disbursed": str(line.disbursed),
                            "remaining": str(case.plan.available(line)),  # what may still be requested
                        }
                        for line in case.plan.lines
                    ],
                    "disbursements": [
                        {
                            "id": d.id,
                            "budget_line_id": d.budget_line_id,
                            "amount": str(d.amount),
                            "status": d.status,
                        }
                        for d in case.plan.disbursements
                    ],
                },
                "contributions": self._contributions(conn, case_id),
                "triggers": list(
                    machine_for(case.lifecycle_version).triggers_for(
                        case, actor, self._package_elsewhere(conn, case)
                    )
                )
                if actor
                else None,
                "timers": [
                    {
                        "name": r["name"],
                        "due_at": r["due_at"].isoformat(),
                        "fires": r["fires_trigger"],
                    }
                    for r in timers
                ],
            }

    @staticmethod
    def _package_elsewhere(conn: Connection, case: Case) -> bool:
        """The case waits on a handover package the destination's own deployment holds: the
        triggers that refuses are not offered (``machine.held_by_package_elsewhere``)."""
        if case.state not in PACKAGE_STATES:
            return False  # no read for a case in any other state
        return SqlInboundStore(conn).served_here(case.destination_office) is False

    def history(self, case_id: str, actor: Actor | None = None) -> list[dict[str, Any]]:
        with self._db.connect() as conn:
            case = SqlCaseRepository(conn).get(case_id)
            if case is None or (actor is not None and not can_see(case, actor)):
                raise UnknownCase(case_id)
            return [
                {
                    "version": h.version,
                    "occurred_at": h.occurred_at.isoformat(),
                    "trigger": h.trigger,
                    "from_state": h.from_state,
                    "to_state": h.to_state,
                    "actor_id": h.actor_id,
                    "reason": h.reason,
                    "payload": h.payload,
                }
                for h in SqlHistoryLog(conn).for_case(case_id)
            ]

    @staticmethod
    def _contributions(conn: Any, case_id: str) -> list[str]:
        c = tb.contributions.c
        rows = conn.execute(select(c.amount_minor, c.currency).where(c.case_id == case_id))
        return [str(Money.from_minor(r.amount_minor, r.currency)) for r in rows]


def ensure_office(
    db: Engine, code: str, name: str, country: str, webhook_url: str | None = None, email: str | None = None
) -> bool:
    """Adds the office if it is not there yet; True when it was added."""
    with writing(db) as conn:
        if conn.scalar(select(tb.offices.c.code).where(tb.offices.c.code == code)):
            return False
        conn.execute(
            insert(tb.offices),
            {
                "code": code,
                "name": name,
                "country": country.upper(),
                "webhook_url": webhook_url,
                "email": email,
            },
        )
        return True
