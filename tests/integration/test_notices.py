"""What a notice reads from the case (SqlFacts): the principal's contacts, whoever is listed first."""

from __future__ import annotations

from datetime import date

from sqlalchemy import insert

from tests.support import advance_to, jobs_of
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
