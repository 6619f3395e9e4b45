"""What the workers' notices and handover packages say, read from the case when the job runs."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, Select, bindparam, case, exists, func, or_, select

from workflow.adapters import tables as tb
from workflow.adapters.jobs import autocommit
from workflow.domain.actors import DELIVERY_ACTOR
from workflow.domain.lifecycle import DESTINATION, ORIGIN
from workflow.domain.programme import Programme
from workflow.service_layer.documents import ACCEPTED, DECISION, PACKAGE, REFUSED
from workflow.service_layer.effects import Facts, Job
from workflow.service_layer.notifications import EMAIL, FALLBACK_LANGUAGE, LANGUAGES, SMS

# Staff read notices in their country's language where the templates have it.
OFFICE_LANGUAGE = {"EE": "et", "UA": "uk"}
HANDOVER_PACKAGE = PACKAGE
# A handover package goes nowhere once a later event named another destination office, or the
# case ended without a handover (a package replayed from the dead letters must not open a copy of
# a case closed as not handed over, or lapsed).
REDIRECTED = "HandoverRedirected"
NOT_HANDED_OVER = "not_handed_over"
LAPSED = "lapsed"

c, m, t = tb.cases.c, tb.household_members.c, tb.timers.c
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


def case_ref(case_id: str) -> str:
    """The reference a family quotes: short, and nothing but the case id's first characters."""
    return f"C-{case_id[:8].upper()}"


def _facts_query() -> Select[Any]:
    """The case, both offices, the principal's contacts, the travellers and the timers' dates:
    one statement, so a job reads its facts in one round trip and one snapshot."""
    origin, destination = tb.offices.alias("origin"), tb.offices.alias("destination")
    principal = tb.household_members.alias("principal")
    first = (
        select(m.id)
        .where(m.case_id == c.id)
        .order_by(case((m.relationship == "principal", 0), else_=1), m.position)
        .limit(1)
        .scalar_subquery()
    )
    # The deadline the event speaks of: the one whose timer fired it (an escalation: the missed
    # due date, not the deadline re-armed with it), else the earliest its own transition armed
    # (a handover to acknowledge, a visit due). Matched on the fire's clock reading, which the
    # event, its timers' created_at and a fired timer's fired_at share; read as of the event,
    # whatever the case did since.
    occurred = (
        select(tb.outbox.c.occurred_at).where(tb.outbox.c.event_id == bindparam("event_id")).scalar_subquery()
    )
    h = tb.case_history.c
    version = select(tb.outbox.c.case_version).where(tb.outbox.c.event_id == bindparam("event_id"))
    fired_by = select(h.actor_id).where(h.case_id == c.id, h.version == version.scalar_subquery())
    missed = select(func.max(t.due_at)).where(t.case_id == c.id, t.fired_at == occurred)  # set by a fire only
    armed = select(func.min(t.due_at)).where(t.case_id == c.id, t.created_at == occurred)
    return (
        select(
            c.id,
            c.language,
            c.departure_on,
            c.route,
            c.arrived_on,
            c.origin_office,
            c.destination_office,
            c.owner_office,
            c.shared_at,
            *(col.label(f"origin_{col.name}") for col in origin.c),
            *(col.label(f"destination_{col.name}") for col in destination.c),
            principal.c.phone.label("principal_phone"),
            principal.c.email.label("principal_email"),
            select(func.count()).where(m.case_id == c.id).scalar_subquery().label("travellers"),
            func.coalesce(missed.scalar_subquery(), armed.scalar_subquery()).label("due_on"),
            armed.scalar_subquery().label("next_due_on"),
            fired_by.scalar_subquery().label("fired_by"),
        )
        .select_from(tb.cases)
        .join(origin, origin.c.code == c.origin_office)
        .join(destination, destination.c.code == c.destination_office)
        .outerjoin(principal, principal.c.id == first)
        .where(c.id == bindparam("case_id"))
    )


_FACTS = _facts_query()


_PROGRAMME = Programme()


class SqlFacts:
    def __init__(self, db: Engine, returnee_contact: timedelta = _PROGRAMME.returnee_contact_period) -> None:
        """``returnee_contact``: the programme's period, counted from arrival, within which the
        family must contact the destination office (the date the welcome gives them)."""
        self._db, self._returnee_contact = db, returnee_contact

    def facts(self, job: Job) -> dict[str, Facts]:
        """Both sides' facts from one read: the family's and the values are the same for both;
        the office (language, e-mail, webhook) is the origin's or the destination's."""
        with autocommit(self._db, write=False) as conn:
            row = conn.execute(_FACTS, {"case_id": job.case_id, "event_id": job.event_id}).one()
            grant = self._grant(conn, job) if job.event_type == "GrantDisbursed" else {}
        contacts = {
            channel: address
            for channel, address in ((SMS, row.principal_phone), (EMAIL, row.principal_email))
            if address
        }
        values: dict[str, object] = {
            "case_ref": case_ref(row.id),
            "due_on": _date(row.due_on),
            "next_due_on": _date(row.next_due_on),
            "departure_on": row.departure_on or "",
            "arrival_on": row.arrived_on or row.departure_on or "",
            "route": row.route or "",
            "travellers": row.travellers,
            "office_name": row.destination_name,
            "office_contact": row.destination_email or "",
            # The returnee-contact deadline is armed at the handover, after the welcome goes out.
            "contact_by": _date(row.arrived_on + self._returnee_contact) if row.arrived_on else "",
            "destination_office": row.destination_name,
            "origin_office": row.origin_name,
            **grant,
        }
        family_language = row.language if row.language in LANGUAGES else FALLBACK_LANGUAGE
        owner = ORIGIN if row.owner_office == row.origin_office else DESTINATION
        return {
            side: Facts(
                family_language=family_language,
                family_contacts=contacts,
                office_language=OFFICE_LANGUAGE.get(getattr(row, f"{side}_country"), FALLBACK_LANGUAGE),
                office_email=getattr(row, f"{side}_email"),
                office_webhook=getattr(row, f"{side}_webhook_url"),
                values=values,
                owner_served=getattr(row, f"{owner}_webhook_url") is None,
                from_elsewhere=(row.fired_by or "").startswith(DELIVERY_ACTOR),
                shared=row.shared_at is not None,
            )
            for side in (ORIGIN, DESTINATION)
        }

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

    def superseded_since(self, job: Job) -> bool:
        later, this = tb.outbox.alias("later"), tb.outbox.c
        event_id = select(this.id).where(this.event_id == job.event_id).scalar_subquery()
        redirected = exists().where(
            later.c.case_id == job.case_id, later.c.id > event_id, later.c.event_type == REDIRECTED
        )
        ended = exists().where(c.id == job.case_id, or_(c.outcome == NOT_HANDED_OVER, c.state == LAPSED))
        query = select(or_(redirected, ended))
        with self._db.connect() as conn:
            return bool(conn.scalar(query))

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
