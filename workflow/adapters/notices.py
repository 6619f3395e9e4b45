"""What the workers' notices and handover packages say, read from the case when the job runs."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select

from workflow.adapters import tables as tb
from workflow.domain.lifecycle import DESTINATION
from workflow.service_layer.documents import ACCEPTED, DECISION, PACKAGE, REFUSED
from workflow.service_layer.effects import Facts, Job
from workflow.service_layer.notifications import EMAIL, FALLBACK_LANGUAGE, LANGUAGES, SMS

# Staff read notices in their country's language where the templates have it.
OFFICE_LANGUAGE = {"EE": "et", "UA": "uk"}
HANDOVER_PACKAGE = PACKAGE

c, m, o, t = tb.cases.c, tb.household_members.c, tb.offices.c, tb.timers.c
_CASE = select(
    c.id,
    c.language,
    c.origin_office,
    c.destination_office,
    c.departure_on,
    c.route,
    c.arrived_on,
)
_MEMBERS = select(m.id, m.full_name, m.date_of_birth, m.relationship, m.phone, m.email, m.position)
_OFFICES = select(o.code, o.name, o.country, o.email, o.webhook_url)
_TIMERS = select(t.name, t.due_at).where(t.status == "pending").order_by(t.due_at)


def case_ref(case_id: str) -> str:
    """The reference a family quotes: short, and nothing but the case id's first characters."""
    return f"C-{case_id[:8].upper()}"


class SqlFacts:
    def __init__(self, db: Engine) -> None:
        self._db = db

    def facts(self, job: Job, side: str) -> Facts:
        with self._db.connect() as conn:
            case = conn.execute(_CASE.where(c.id == job.case_id)).one()
            members = conn.execute(_MEMBERS.where(m.case_id == job.case_id).order_by(m.position)).all()
            offices = {
                row.code: row
                for row in conn.execute(
                    _OFFICES.where(o.code.in_([case.origin_office, case.destination_office]))
                )
            }
            timers = {row.name: row.due_at for row in conn.execute(_TIMERS.where(t.case_id == job.case_id))}
            grant = self._grant(conn, job) if job.event_type == "GrantDisbursed" else {}
        principal = next(
            (p for p in members if p.relationship == "principal"), members[0] if members else None
        )
        contacts = {}
        if principal is not None:
            contacts = {channel: a for channel, a in ((SMS, principal.phone), (EMAIL, principal.email)) if a}
        office = offices[case.destination_office if side == DESTINATION else case.origin_office]
        destination, origin = offices[case.destination_office], offices[case.origin_office]
        values: dict[str, object] = {
            "case_ref": case_ref(case.id),
            "due_on": _date(min(timers.values(), default=None)),
            "departure_on": case.departure_on or "",
            "arrival_on": case.arrived_on or case.departure_on or "",
            "route": case.route or "",
            "travellers": len(members),
            "office_name": destination.name,
            "office_contact": destination.email or "",
            "contact_by": _date(timers.get("returnee_contact")),
            "destination_office": destination.name,
            "origin_office": origin.name,
            **grant,
        }
        return Facts(
            family_language=case.language if case.language in LANGUAGES else FALLBACK_LANGUAGE,
            family_contacts=contacts,
            office_language=OFFICE_LANGUAGE.get(office.country, FALLBACK_LANGUAGE),
            office_email=office.email,
            office_webhook=office.webhook_url,
            values=values,
        )

    @staticmethod
    def _grant(conn: Any, job: Job) -> dict[str, object]:
        """The amount, currency and category of the disbursement this event recorded."""
        version = select(tb.outbox.c.case_version).where(tb.outbox.c.event_id == job.event_id)
        h = tb.case_history.c
        payload = conn.execute(
            select(h.payload).where(h.case_id == job.case_id, h.version == version.scalar_subquery())
        ).scalar()
        if not payload:
            return {}
        category = conn.scalar(
            select(tb.budget_lines.c.category).where(tb.budget_lines.c.id == payload.get("budget_line_id"))
        )
        return {
            "amount": payload.get("amount", ""),
            "currency": payload.get("currency", ""),
            "category": category,
        }

    def handover_package(self, job: Job) -> dict[str, Any]:
        """The family as the destination office receives them: names, ages, contacts, the
        journey. No legal status, asylum history, document numbers or free-text notes."""
        with self._db.connect() as conn:
            case = conn.execute(_CASE.where(c.id == job.case_id)).one()
            members = conn.execute(_MEMBERS.where(m.case_id == job.case_id).order_by(m.position)).all()
        return {
            "type": HANDOVER_PACKAGE,
            "event_id": job.event_id,
            "case_id": case.id,
            "case_ref": case_ref(case.id),
            "origin_office": case.origin_office,
            "destination_office": case.destination_office,
            "language": case.language,
            "journey": {"departure_on": _date(case.departure_on), "route": case.route},
            "arrived_on": _date(case.arrived_on),
            "household": [
                {
                    "id": p.id,
                    "full_name": p.full_name,
                    "date_of_birth": _date(p.date_of_birth),
                    "relationship": p.relationship,
                    "phone": p.phone,
                    "email": p.email,
                }
                for p in members
            ],
        }

    def handover_decision(self, job: Job) -> dict[str, Any]:
        """The destination's decision for the origin's deployment: the case and the verdict, and
        a refusal's reason (the origin needs it to act; it names no legal status)."""
        h = tb.case_history.c
        version = select(tb.outbox.c.case_version).where(tb.outbox.c.event_id == job.event_id)
        with self._db.connect() as conn:
            case = conn.execute(_CASE.where(c.id == job.case_id)).one()
            reason = conn.scalar(
                select(h.reason).where(h.case_id == job.case_id, h.version == version.scalar_subquery())
            )
        refused = job.event_type == "HandoverRefused"
        return {
            "type": DECISION,
            "event_id": job.event_id,
            "case_id": case.id,
            "from_office": case.destination_office,
            "to_office": case.origin_office,
            "decision": REFUSED if refused else ACCEPTED,
            **({"reason": reason} if refused else {}),
        }


def _date(value: object) -> str:
    if isinstance(value, datetime):
        return value.date().isoformat()
    return value.isoformat() if hasattr(value, "isoformat") else ""
