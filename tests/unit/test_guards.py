"""Guards: each names the rule it enforces, and a refused fire reports every broken rule at once."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import pytest

from tests.unit.builders import (
    APPROVED_ID,
    DEPARTURE_ON,
    LINE_ID,
    PLAN_APPROVER_ID,
    PRINCIPAL_ID,
    RECEIPTED_ID,
    REQUESTED_ID,
    REQUESTER_ID,
    SAMPLE_PAYLOADS,
    approved_plan,
    case_in,
    ctx,
    eligible,
    machine,
    settled_tranches,
    snapshot,
    tranche,
)
from workflow.domain import guards as g
from workflow.domain import payloads as p
from workflow.domain.actors import SYSTEM_ACTOR, Actor, Role
from workflow.domain.case import Case
from workflow.domain.errors import GuardFailed
from workflow.domain.lifecycle import LIFECYCLE
from workflow.domain.money import Money
from workflow.domain.plan import APPROVED, RECEIPTED, REJECTED, REQUESTED
from workflow.domain.programme import FireContext, Programme
from workflow.service_layer.payloads import parse_payload

# The reminder may still go out on the departure day itself, not the day after.
DEPARTURE_DAY_EVENING = datetime.combine(DEPARTURE_ON, time(23, 59), UTC)
DAY_AFTER_DEPARTURE = DEPARTURE_DAY_EVENING + timedelta(minutes=1)
FINANCE = Actor.of("finance-officer", "kyiv", Role.FINANCE_OFFICER)
FINANCE_LEAD = Actor.of("finance-lead", "kyiv", Role.FINANCE_OFFICER)
CASEWORKER = Actor.of("kyiv-caseworker", "kyiv", Role.CASEWORKER)
CASH_PROGRAMME = Programme(allow_cash=True)


def payload(shape: type, **overrides: Any) -> Any:
    return parse_payload(shape, {**SAMPLE_PAYLOADS[shape.__name__], **overrides})


def with_eligibility(**fields: Any) -> Case:
    return case_in("application_submitted", eligibility=dataclasses.replace(eligible(), **fields))


Scenario = Callable[[], tuple[Case, Any, FireContext]]


def scenario(case: Case, body: Any = None, context: FireContext | None = None) -> Scenario:
    return lambda: (case, body, context or ctx(FINANCE))


def unapproved_plan():
    plan = approved_plan()
    plan.approved_by = plan.approved_at = None
    return plan


def cash_requested():
    return approved_plan(tranches=[tranche(REQUESTED_ID, "50.00", REQUESTED, kind="cash")])


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
        g.another_destination,
        scenario(case_in("arrived"), p.RedirectHandover(destination_office="kyiv", reason="r")),
        "already its destination",
        scenario(case_in("arrived"), p.RedirectHandover(destination_office="riga", reason="r")),
    ),
    (
        g.another_destination,
        scenario(case_in("arrived"), p.RedirectHandover(destination_office="tallinn", reason="r")),
        "origin",
        scenario(case_in("arrived"), p.RedirectHandover(destination_office="riga", reason="r")),
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
        g.plan_approved,
        scenario(case_in("plan_approved", plan=None), payload(p.RequestDisbursement)),
        "no reintegration plan",
        scenario(case_in("plan_approved"), payload(p.RequestDisbursement)),
    ),
    (
        g.plan_approved,
        scenario(case_in("plan_approved", plan=unapproved_plan()), payload(p.RequestDisbursement)),
        "plan is not approved",
        scenario(case_in("plan_approved"), payload(p.RequestDisbursement)),
    ),
    (
        g.disbursement_requested,
        scenario(case_in("disbursing"), payload(p.ApproveDisbursement, disbursement_id=APPROVED_ID)),
        f"disbursement {APPROVED_ID} is approved, not requested",
        scenario(case_in("disbursing"), payload(p.ApproveDisbursement)),
    ),
    (
        g.disbursement_requested,
        scenario(case_in("disbursing"), payload(p.RejectDisbursement, disbursement_id="tranche-elsewhere")),
        "disbursement tranche-elsewhere is not in this case's plan",
        scenario(case_in("disbursing"), payload(p.RejectDisbursement)),
    ),
    (
        g.disbursement_approved,
        scenario(case_in("disbursing"), payload(p.RecordReceipt, disbursement_id=RECEIPTED_ID)),
        f"disbursement {RECEIPTED_ID} is receipted, not approved",
        scenario(case_in("disbursing"), payload(p.RecordReceipt)),
    ),
    (
        g.disbursement_approved,
        scenario(case_in("disbursing"), payload(p.RecordReceipt, disbursement_id=REQUESTED_ID)),
        f"disbursement {REQUESTED_ID} is requested, not approved",
        scenario(case_in("disbursing"), payload(p.RecordReceipt, disbursement_id=APPROVED_ID)),
    ),
    (
        g.four_eyes,
        scenario(
            case_in("disbursing"),
            payload(p.ApproveDisbursement),
            ctx(Actor.of(REQUESTER_ID, "kyiv", Role.FINANCE_OFFICER)),
        ),
        "four eyes: whoever requested a disbursement cannot approve it",
        scenario(case_in("disbursing"), payload(p.ApproveDisbursement), ctx(FINANCE)),
    ),
    (
        g.four_eyes,
        scenario(
            case_in("plan_approved"),
            payload(p.ApproveDisbursement),
            ctx(Actor.of(PLAN_APPROVER_ID, "kyiv", Role.FINANCE_OFFICER)),
        ),
        "four eyes: the approver of this plan cannot approve disbursements against it",
        scenario(case_in("plan_approved"), payload(p.ApproveDisbursement), ctx(FINANCE)),
    ),
    (
        g.cash_allowed,
        scenario(case_in("plan_approved"), payload(p.RequestDisbursement, kind="cash")),
        "cash assistance is switched off",
        scenario(
            case_in("plan_approved"),
            payload(p.RequestDisbursement, kind="cash"),
            ctx(FINANCE, CASH_PROGRAMME),
        ),
    ),
    (
        g.cash_allowed,
        scenario(case_in("plan_approved"), payload(p.RequestDisbursement, kind="cash")),
        "cash assistance is switched off",
        scenario(case_in("plan_approved"), payload(p.RequestDisbursement, kind="in_kind")),
    ),
    (
        # A cash request made while the programme allowed cash is not approved once it no longer does.
        g.cash_allowed,
        scenario(case_in("plan_approved", plan=cash_requested()), payload(p.ApproveDisbursement)),
        "cash assistance is switched off",
        scenario(
            case_in("plan_approved", plan=cash_requested()),
            payload(p.ApproveDisbursement),
            ctx(FINANCE, CASH_PROGRAMME),
        ),
    ),
    (
        g.within_budget_line,
        scenario(case_in("plan_approved"), payload(p.RequestDisbursement, budget_line_id="line-elsewhere")),
        "budget line line-elsewhere is not in this case's plan",
        scenario(case_in("plan_approved"), payload(p.RequestDisbursement)),
    ),
    (
        g.within_budget_line,
        scenario(case_in("plan_approved"), payload(p.RequestDisbursement, currency="UAH")),
        "budget line is in EUR, not UAH",
        scenario(case_in("plan_approved"), payload(p.RequestDisbursement, currency="EUR")),
    ),
    (
        # 1000.00 allocated, 100.00 disbursed, 50.00 requested and awaiting approval: 850.00 left.
        g.within_budget_line,
        scenario(case_in("plan_approved"), payload(p.RequestDisbursement, amount="850.01")),
        "exceeds the 850.00 EUR left on the budget line besides 50.00 EUR requested and awaiting approval",
        scenario(case_in("plan_approved"), payload(p.RequestDisbursement, amount="850.00")),
    ),
    (
        # Approving the 50.00 request: 100.00 disbursed of 140.00 leaves 40.00 (the request itself
        # is not counted twice).
        g.within_budget_line,
        scenario(case_in("disbursing", plan=approved_plan("140.00")), payload(p.ApproveDisbursement)),
        "disbursement of 50.00 exceeds the 40.00 EUR left on the budget line",
        scenario(case_in("disbursing", plan=approved_plan("150.00")), payload(p.ApproveDisbursement)),
    ),
    (
        g.has_disbursement,
        scenario(case_in("disbursing", plan=approved_plan(tranches=[tranche("t", "9.99", REQUESTED)]))),
        "nothing has been disbursed",
        scenario(case_in("disbursing", plan=approved_plan(tranches=[tranche("t", "0.01", RECEIPTED)]))),
    ),
    (
        g.no_request_awaiting_approval,
        scenario(case_in("disbursing")),
        f"disbursement requests await approval or rejection: {REQUESTED_ID}",
        scenario(case_in("disbursing", plan=approved_plan(tranches=settled_tranches()))),
    ),
    (
        g.every_receipt_recorded,
        scenario(case_in("disbursing")),
        f"approved disbursements have no receipt yet: {APPROVED_ID}",
        scenario(case_in("disbursing", plan=approved_plan(tranches=settled_tranches()))),
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


def fire(case: Case, trigger: str, body: Any, actor: Actor = FINANCE, programme: Programme | None = None):
    return machine().fire(case, trigger, body, ctx(actor, programme or Programme()))


def request(case: Case, actor: Actor = CASEWORKER, **overrides: Any) -> str:
    """Requests a tranche and returns its id."""
    fire(case, "request_disbursement", payload(p.RequestDisbursement, **overrides), actor)
    return case.plan.disbursements[-1].id


def approve(disbursement_id: str) -> Any:
    return payload(p.ApproveDisbursement, disbursement_id=disbursement_id)


def test_the_plan_approver_cannot_approve_disbursements_against_the_plan_they_approved():
    case = case_in("plan_submitted", plan=unapproved_plan())
    fire(case, "approve_plan", p.NoPayload(), Actor.of("pat", "tallinn", Role.APPROVER))
    requested = request(case)
    before = snapshot(case)

    with pytest.raises(GuardFailed) as refused:
        fire(case, "approve_disbursement", approve(requested), Actor.of("pat", "kyiv", Role.FINANCE_OFFICER))
    assert refused.value.reasons == (
        "four eyes: the approver of this plan cannot approve disbursements against it",
    )
    assert snapshot(case) == before

    fire(case, "approve_disbursement", approve(requested), FINANCE)
    assert case.state == "disbursing"


def test_whoever_requested_a_disbursement_cannot_approve_it_and_another_finance_officer_may():
    case = case_in("plan_approved", plan=approved_plan(tranches=[]))
    requested = request(case, FINANCE, amount="150.00")
    before = snapshot(case)

    with pytest.raises(GuardFailed) as refused:
        fire(case, "approve_disbursement", approve(requested), FINANCE)
    assert refused.value.reasons == ("four eyes: whoever requested a disbursement cannot approve it",)
    assert snapshot(case) == before

    fire(case, "approve_disbursement", approve(requested), FINANCE_LEAD)
    d = case.plan.disbursement(requested)
    assert (d.status, d.requested_by, d.approved_by) == (APPROVED, FINANCE.id, FINANCE_LEAD.id)
    assert case.plan.line(LINE_ID).disbursed == Money(Decimal("150.00"), "EUR")
    assert case.state == "disbursing"


def test_a_request_moves_no_money_and_keeps_the_case_where_it_was():
    case = case_in("plan_approved", plan=approved_plan(tranches=[]))
    request(case, amount="300.00")
    line = case.plan.line(LINE_ID)
    assert line.disbursed.amount == Decimal("0.00")
    assert case.plan.requested(line) == Money(Decimal("300.00"), "EUR")
    assert case.plan.available(line) == Money(Decimal("700.00"), "EUR")
    assert case.state == "plan_approved"


def test_an_approval_records_the_line_amount_and_currency_for_history():
    case = case_in("plan_approved", plan=approved_plan(tranches=[]))
    requested = request(case, amount="120.50")
    fired = fire(case, "approve_disbursement", approve(requested), FINANCE_LEAD)
    assert fired.payload == p.GrantDisbursed(requested, LINE_ID, Decimal("120.50"), "EUR")
    assert [e.event_type for e in fired.events] == ["GrantDisbursed"]


@pytest.mark.parametrize(("programme", "refused"), [(Programme(), True), (CASH_PROGRAMME, False)])
def test_cash_is_refused_unless_the_programme_allows_it(programme, refused):
    case = case_in("plan_approved")
    cash = payload(p.RequestDisbursement, kind="cash")
    if refused:
        with pytest.raises(GuardFailed, match="cash assistance is switched off"):
            fire(case, "request_disbursement", cash, programme=programme)
        assert len(case.plan.disbursements) == 3
    else:
        fire(case, "request_disbursement", cash, programme=programme)
        assert case.plan.disbursements[-1].kind == "cash"


def test_requests_awaiting_approval_count_against_the_budget_until_rejected():
    case = case_in("plan_approved", plan=approved_plan(tranches=[]))  # 1000.00 allocated
    first = request(case, amount="600.00")
    with pytest.raises(GuardFailed) as refused:
        request(case, amount="400.01")
    assert "exceeds the 400.00 EUR left" in refused.value.reasons[0]
    assert "600.00 EUR requested and awaiting approval" in refused.value.reasons[0]

    reject = payload(p.RejectDisbursement, disbursement_id=first)
    fire(case, "reject_disbursement", reject, FINANCE)
    assert case.plan.disbursement(first).status == REJECTED
    assert case.plan.available(case.plan.line(LINE_ID)) == Money(Decimal("1000.00"), "EUR")
    request(case, amount="1000.00")


def test_spending_the_whole_line_leaves_nothing_to_request():
    case = case_in("plan_approved")  # 1000.00 allocated, 100.00 spent, 50.00 awaiting approval
    with pytest.raises(GuardFailed) as refused:
        request(case, amount="850.01")
    assert "850.00 EUR" in refused.value.reasons[0]

    requested = request(case, amount="850.00")
    fire(case, "approve_disbursement", approve(requested), FINANCE_LEAD)
    fire(case, "approve_disbursement", approve(REQUESTED_ID), FINANCE_LEAD)
    assert case.plan.line(LINE_ID).remaining.amount == Decimal("0.00")

    with pytest.raises(GuardFailed) as refused:
        request(case, amount="0.01")
    assert "0.00 EUR" in refused.value.reasons[0]


def test_a_receipt_settles_an_approved_tranche_and_only_an_approved_one():
    case = case_in("disbursing")
    with pytest.raises(GuardFailed, match="requested, not approved"):
        fire(case, "record_receipt", payload(p.RecordReceipt, disbursement_id=REQUESTED_ID), CASEWORKER)

    fire(case, "record_receipt", payload(p.RecordReceipt, receipt_ref="INV-77"), CASEWORKER)
    d = case.plan.disbursement(APPROVED_ID)
    assert (d.status, d.receipt_ref, d.receipt_recorded_by) == (RECEIPTED, "INV-77", CASEWORKER.id)
    with pytest.raises(GuardFailed, match="receipted, not approved"):
        fire(case, "record_receipt", payload(p.RecordReceipt, receipt_ref="INV-78"), CASEWORKER)


def test_disbursement_completes_only_once_every_request_is_settled_and_every_receipt_is_in():
    case = case_in("disbursing")
    with pytest.raises(GuardFailed) as refused:
        fire(case, "complete_disbursement", p.NoPayload())
    assert len(refused.value.reasons) == 2

    fire(case, "reject_disbursement", payload(p.RejectDisbursement), FINANCE)
    with pytest.raises(GuardFailed, match=f"no receipt yet: {APPROVED_ID}"):
        fire(case, "complete_disbursement", p.NoPayload())

    fire(case, "record_receipt", payload(p.RecordReceipt), CASEWORKER)
    fire(case, "complete_disbursement", p.NoPayload())
    assert case.state == "monitoring"


def test_an_approval_breaking_several_rules_reports_each_of_them():
    # One person holding every role requested cash beyond the line, on a plan they approved.
    same_person = Actor.of(PLAN_APPROVER_ID, "kyiv", Role.FINANCE_OFFICER)
    overspent = tranche(REQUESTED_ID, "5000.00", REQUESTED, requested_by=PLAN_APPROVER_ID, kind="cash")
    case = case_in("plan_approved", plan=approved_plan(tranches=[overspent]))
    with pytest.raises(GuardFailed) as refused:
        fire(case, "approve_disbursement", approve(REQUESTED_ID), same_person)
    reasons = refused.value.reasons
    assert len(reasons) == 4
    assert sum("four eyes" in r for r in reasons) == 2
    assert any("cash" in r for r in reasons)
    assert any("exceeds" in r for r in reasons)
