"""Guards: each names the rule it enforces, and a refused fire reports every broken rule at once."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import pytest

from tests.unit.builders import (
    DEPARTURE_ON,
    LINE_ID,
    PLAN_APPROVER_ID,
    PRINCIPAL_ID,
    SAMPLE_PAYLOADS,
    approved_plan,
    case_in,
    ctx,
    eligible,
    machine,
    snapshot,
)
from workflow.domain import guards as g
from workflow.domain import payloads as p
from workflow.domain.actors import SYSTEM_ACTOR, Actor, Role
from workflow.domain.case import Case
from workflow.domain.errors import GuardFailed
from workflow.domain.lifecycle import LIFECYCLE
from workflow.domain.programme import FireContext, Programme
from workflow.service_layer.payloads import parse_payload

# The reminder may still go out on the departure day itself, not the day after.
DEPARTURE_DAY_EVENING = datetime.combine(DEPARTURE_ON, time(23, 59), UTC)
DAY_AFTER_DEPARTURE = DEPARTURE_DAY_EVENING + timedelta(minutes=1)
FINANCE = Actor.of("finance-officer", "kyiv", Role.FINANCE_OFFICER)
CASH_PROGRAMME = Programme(allow_cash=True)


def payload(shape: type, **overrides: Any) -> Any:
    return parse_payload(shape, {**SAMPLE_PAYLOADS[shape.__name__], **overrides})


def with_eligibility(**fields: Any) -> Case:
    return case_in("application_submitted", eligibility=dataclasses.replace(eligible(), **fields))


Scenario = Callable[[], tuple[Case, Any, FireContext]]


def scenario(case: Case, body: Any = None, context: FireContext | None = None) -> Scenario:
    return lambda: (case, body, context or ctx(FINANCE))


# guard, a failing scenario, words its reason must contain, a passing scenario
GUARD_SCENARIOS = [
    (
        g.eligibility_recorded,
        scenario(case_in("inquiry", eligibility=None)),
        "eligibility",
        scenario(case_in("inquiry")),
    ),
    (
        g.consent_signed,
        scenario(with_eligibility(consent_signed_on=None)),
        "consent",
        scenario(with_eligibility()),
    ),
    (
        g.consent_signed,
        scenario(case_in("inquiry", eligibility=None)),
        "consent",
        scenario(with_eligibility()),
    ),
    (
        g.not_eu_eea_citizen,
        scenario(with_eligibility(nationality="EE")),
        "EU/EEA",
        scenario(with_eligibility(nationality="UA")),
    ),
    (
        g.not_eu_eea_citizen,
        scenario(with_eligibility(nationality="NO")),
        "EU/EEA",
        scenario(with_eligibility(nationality="GE")),
    ),
    (
        g.not_eu_eea_citizen,
        scenario(with_eligibility(nationality="CH")),
        "EU/EEA",
        scenario(with_eligibility(nationality="MD")),
    ),
    (
        g.no_expulsion_order,
        scenario(with_eligibility(expulsion_order=True)),
        "expulsion order",
        scenario(with_eligibility()),
    ),
    (
        g.travel_document_present_or_requested,
        scenario(with_eligibility(travel_document="missing")),
        "travel document",
        scenario(with_eligibility(travel_document="present")),
    ),
    (
        g.travel_document_present_or_requested,
        scenario(with_eligibility(travel_document="missing")),
        "travel document",
        scenario(with_eligibility(travel_document="requested")),
    ),
    (
        g.asylum_claim_settled,
        scenario(with_eligibility(asylum_status="pending", return_chosen_while_pending=False)),
        "asylum claim is pending",
        scenario(with_eligibility(asylum_status="pending", return_chosen_while_pending=True)),
    ),
    (
        g.asylum_claim_settled,
        scenario(with_eligibility(asylum_status="pending", return_chosen_while_pending=False)),
        "asylum claim is pending",
        scenario(with_eligibility(asylum_status="closed")),
    ),
    (
        g.arrival_after_departure,
        scenario(
            case_in("departed"), payload(p.ConfirmArrival, arrived_on=str(DEPARTURE_ON - timedelta(days=1)))
        ),
        "before the departure",
        scenario(case_in("departed"), payload(p.ConfirmArrival, arrived_on=str(DEPARTURE_ON))),
    ),
    (
        g.departure_ahead,
        scenario(case_in("travel_booked"), None, ctx(SYSTEM_ACTOR, now=DAY_AFTER_DEPARTURE)),
        "departure date has passed",
        scenario(case_in("travel_booked"), None, ctx(SYSTEM_ACTOR, now=DEPARTURE_DAY_EVENING)),
    ),
    (
        g.plan_lines_name_household_members,
        scenario(
            case_in("reintegration_counselling"),
            payload(
                p.DraftPlan,
                lines=[{"member_id": "member-stranger", "category": "business", "amount": "1.00"}],
            ),
        ),
        "member-stranger, who is not in this household",
        scenario(case_in("reintegration_counselling"), payload(p.DraftPlan)),
    ),
    (
        g.has_plan,
        scenario(case_in("plan_drafted", plan=None)),
        "no reintegration plan",
        scenario(case_in("plan_drafted")),
    ),
    (
        g.four_eyes,
        scenario(
            case_in("plan_approved"), None, ctx(Actor.of(PLAN_APPROVER_ID, "kyiv", Role.FINANCE_OFFICER))
        ),
        "four eyes: the approver of this plan cannot disburse",
        scenario(case_in("plan_approved"), None, ctx(FINANCE)),
    ),
    (
        g.cash_allowed,
        scenario(case_in("plan_approved"), payload(p.Disburse, kind="cash")),
        "cash assistance is switched off",
        scenario(case_in("plan_approved"), payload(p.Disburse, kind="cash"), ctx(FINANCE, CASH_PROGRAMME)),
    ),
    (
        g.cash_allowed,
        scenario(case_in("plan_approved"), payload(p.Disburse, kind="cash")),
        "cash assistance is switched off",
        scenario(case_in("plan_approved"), payload(p.Disburse, kind="in_kind")),
    ),
    (
        g.within_budget_line,
        scenario(case_in("plan_approved"), payload(p.Disburse, budget_line_id="line-elsewhere")),
        "budget line line-elsewhere is not in this case's plan",
        scenario(case_in("plan_approved"), payload(p.Disburse)),
    ),
    (
        g.within_budget_line,
        scenario(case_in("plan_approved"), payload(p.Disburse, currency="UAH")),
        "budget line is in EUR, not UAH",
        scenario(case_in("plan_approved"), payload(p.Disburse, currency="EUR")),
    ),
    (
        g.within_budget_line,
        scenario(case_in("plan_approved"), payload(p.Disburse, amount="900.01")),
        "exceeds the 900.00 EUR left",
        scenario(case_in("plan_approved"), payload(p.Disburse, amount="900.00")),
    ),
    (
        g.has_disbursement,
        scenario(case_in("disbursing", plan=approved_plan(disbursed="0.00"))),
        "nothing has been disbursed",
        scenario(case_in("disbursing", plan=approved_plan(disbursed="0.01"))),
    ),
    (
        g.has_monitoring_visit_unless_contact_lost,
        scenario(case_in("monitoring", last_visit_on=None), p.Close(outcome="reintegrated")),
        "no monitoring visit",
        scenario(case_in("monitoring", last_visit_on=date(2027, 1, 5)), p.Close(outcome="reintegrated")),
    ),
    (
        g.has_monitoring_visit_unless_contact_lost,
        scenario(case_in("monitoring", last_visit_on=None), p.Close(outcome="partially_reintegrated")),
        "lost-contact",
        scenario(case_in("monitoring", last_visit_on=None), p.Close(outcome="lost_contact")),
    ),
]


@pytest.mark.parametrize(
    ("guard", "failing", "words", "passing"),
    [pytest.param(*row, id=f"{row[0].__name__}-{i}") for i, row in enumerate(GUARD_SCENARIOS)],
)
def test_each_guard_refuses_with_a_reason_naming_its_rule_and_passes_when_the_rule_holds(
    guard, failing, words, passing
):
    reasons = guard(*failing())

    assert len(reasons) == 1
    assert words in reasons[0]
    assert guard(*passing()) == []


def test_every_guard_the_lifecycle_uses_has_a_failing_and_a_passing_scenario():
    used = {name for t in LIFECYCLE.transitions for name in t.guard_names}
    assert used <= {row[0].__name__ for row in GUARD_SCENARIOS}


@pytest.mark.parametrize("nationality", sorted(g.EU_EEA))
def test_no_eu_eea_or_swiss_citizen_is_approved_for_return(nationality):
    assert g.not_eu_eea_citizen(with_eligibility(nationality=nationality), None, ctx(FINANCE))


def test_a_plan_line_naming_a_stranger_is_refused_once_per_such_line():
    lines = [
        {"member_id": PRINCIPAL_ID, "category": "business", "amount": "1.00"},
        {"member_id": "stranger-1", "category": "business", "amount": "1.00"},
        {"member_id": "stranger-2", "category": "housing", "amount": "1.00"},
    ]
    reasons = g.plan_lines_name_household_members(
        case_in("reintegration_counselling"), payload(p.DraftPlan, lines=lines), ctx(FINANCE)
    )
    assert len(reasons) == 2
    assert "stranger-1" in reasons[0]
    assert "stranger-2" in reasons[1]


def test_approve_return_lists_every_broken_rule_at_once_and_changes_nothing():
    case = with_eligibility(nationality="EE", expulsion_order=True, consent_signed_on=None)
    before = snapshot(case)
    approver = Actor.of("approver", "tallinn", Role.APPROVER)

    with pytest.raises(GuardFailed) as refused:
        machine().fire(case, "approve_return", p.NoPayload(), ctx(approver))

    reasons = refused.value.reasons
    assert len(reasons) == 3
    assert any("consent" in r for r in reasons)
    assert any("EU/EEA" in r for r in reasons)
    assert any("expulsion order" in r for r in reasons)
    assert refused.value.trigger == "approve_return"
    assert snapshot(case) == before


def test_the_plan_approver_cannot_disburse_against_the_plan_they_approved():
    case = case_in("plan_submitted", plan=approved_plan())
    case.plan.approved_by = case.plan.approved_at = None
    machine().fire(case, "approve_plan", p.NoPayload(), ctx(Actor.of("pat", "tallinn", Role.APPROVER)))
    before = snapshot(case)

    with pytest.raises(GuardFailed) as refused:
        machine().fire(
            case, "disburse", payload(p.Disburse), ctx(Actor.of("pat", "kyiv", Role.FINANCE_OFFICER))
        )
    assert refused.value.reasons == ("four eyes: the approver of this plan cannot disburse against it",)
    assert snapshot(case) == before

    machine().fire(case, "disburse", payload(p.Disburse), ctx(FINANCE))
    assert case.state == "disbursing"


@pytest.mark.parametrize(("programme", "refused"), [(Programme(), True), (CASH_PROGRAMME, False)])
def test_cash_is_refused_unless_the_programme_allows_it(programme, refused):
    case = case_in("plan_approved")
    cash = payload(p.Disburse, kind="cash")
    if refused:
        with pytest.raises(GuardFailed, match="cash assistance is switched off"):
            machine().fire(case, "disburse", cash, ctx(FINANCE, programme))
        assert case.state == "plan_approved"
    else:
        machine().fire(case, "disburse", cash, ctx(FINANCE, programme))
        assert case.state == "disbursing"


def test_spending_beyond_the_budget_line_is_refused_naming_what_is_left():
    case = case_in("plan_approved")  # 1000.00 allocated, 100.00 already spent
    with pytest.raises(GuardFailed) as refused:
        machine().fire(case, "disburse", payload(p.Disburse, amount="900.01"), ctx(FINANCE))
    assert "900.00 EUR" in refused.value.reasons[0]

    machine().fire(case, "disburse", payload(p.Disburse, amount="900.00"), ctx(FINANCE))
    assert case.plan.line(LINE_ID).remaining.amount == Decimal("0.00")

    with pytest.raises(GuardFailed) as refused:
        machine().fire(case, "disburse", payload(p.Disburse, amount="0.01"), ctx(FINANCE))
    assert "0.00 EUR" in refused.value.reasons[0]


def test_a_disbursement_breaking_several_rules_reports_each_of_them():
    case = case_in("plan_approved")
    same_person = Actor.of(PLAN_APPROVER_ID, "kyiv", Role.FINANCE_OFFICER)
    with pytest.raises(GuardFailed) as refused:
        machine().fire(case, "disburse", payload(p.Disburse, amount="5000.00", kind="cash"), ctx(same_person))
    assert len(refused.value.reasons) == 3
    assert {"four eyes", "cash", "exceeds"} == {
        word for word in ("four eyes", "cash", "exceeds") for r in refused.value.reasons if word in r
    }
