"""What a notice reads from the case (SqlFacts): the principal's contacts, whoever is listed first."""

from __future__ import annotations

from datetime import date, timedelta

from sqlalchemy import insert, select

from tests.support import FixedClock, advance_to, jobs_of
from workflow.adapters import tables as tb
from workflow.adapters.notices import SqlFacts
from workflow.bootstrap import App
from workflow.demo import HOUSEHOLD
from workflow.domain.lifecycle import DESTINATION
from workflow.service_layer.notifications import EMAIL, SMS

PRINCIPAL = HOUSEHOLD[0]


def test_the_notice_goes_to_the_principal_whatever_order_the_members_were_added(app: App) -> None:
    case_id = advance_to(app, "return_approved")
    with app.db.begin() as conn:  # a member added later, listed first, is not the principal
        conn.execute(
            insert(tb.household_members),
            {
                "id": "m-first",
                "case_id": case_id,
                "position": -1,
                "full_name": "Listed First",
                "date_of_birth": date(2010, 1, 1),
                "relationship": "child",
                "phone": "+3725550999",
                "email": "first@example.org",
            },
        )
    facts = SqlFacts(app.db).facts(jobs_of(app, case_id)[-1])[DESTINATION]
    assert facts.family_contacts == {SMS: PRINCIPAL["phone"], EMAIL: PRINCIPAL["email"]}
    assert facts.values["travellers"] == len(HOUSEHOLD) + 1


def _facts_of(app: App, case_id: str, event_type: str) -> dict[str, object]:
    (job,) = [j for j in jobs_of(app, case_id) if j.event_type == event_type][-1:]
    return dict(SqlFacts(app.db, timedelta(days=90)).facts(job)[DESTINATION].values)


def test_the_arrival_welcome_gives_the_family_the_contact_deadline_counted_from_arrival(app: App) -> None:
    """The returnee-contact timer is armed only at the handover, after the welcome is sent: the
    date comes from the arrival and the programme's period, not from a pending timer."""
    case_id = advance_to(app, "arrived")
    with app.db.connect() as conn:
        arrived_on = conn.scalar(select(tb.cases.c.arrived_on).where(tb.cases.c.id == case_id))
    facts = _facts_of(app, case_id, "ArrivalConfirmed")
    assert facts["contact_by"] == (arrived_on + timedelta(days=90)).isoformat()


def test_an_escalation_names_the_missed_deadline_not_the_one_it_re_armed(app: App, clock: FixedClock) -> None:
    case_id = advance_to(app, "handover_pending")
    t = tb.timers.c
    with app.db.connect() as conn:
        missed = conn.scalar(select(t.due_at).where(t.case_id == case_id, t.status == "pending"))
    clock.current = missed
    assert app.timers.fire_due().fired == 1
    with app.db.connect() as conn:
        rearmed = conn.scalar(select(t.due_at).where(t.case_id == case_id, t.status == "pending"))
    assert rearmed > missed
    # What the origin office was asked to acknowledge by, and what the escalation says was missed.
    assert _facts_of(app, case_id, "HandoverSent")["due_on"] == missed.date().isoformat()
    assert _facts_of(app, case_id, "HandoverEscalated")["due_on"] == missed.date().isoformat()


def test_a_missed_monitoring_visit_tells_the_office_the_missed_date_and_the_family_the_next(
    app: App, clock: FixedClock
) -> None:
    case_id = advance_to(app, "monitoring")
    t = tb.timers.c
    with app.db.connect() as conn:
        missed = conn.scalar(select(t.due_at).where(t.case_id == case_id, t.status == "pending"))
    clock.current = missed
    assert app.timers.fire_due().fired == 1
    with app.db.connect() as conn:
        rearmed = conn.scalar(select(t.due_at).where(t.case_id == case_id, t.status == "pending"))
    facts = _facts_of(app, case_id, "MonitoringVisitEscalated")
    assert (facts["due_on"], facts["next_due_on"]) == (missed.date().isoformat(), rearmed.date().isoformat())
