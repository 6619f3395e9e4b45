"""Guards: each returns the human-readable reasons a transition may not happen (empty: allowed)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from workflow.domain.case import Case
from workflow.domain.programme import FireContext

Guard = Callable[[Case, Any, FireContext], list[str]]

# EU and EEA states, plus Switzerland, whose citizens the programme does not return.
EU_EEA = frozenset(
    "AT BE BG HR CY CZ DK EE FI FR DE GR HU IE IT LV LT LU MT NL PL PT RO SK SI ES SE "  # noqa: SIM905
    "IS LI NO CH".split()
)


def eligibility_recorded(case: Case, payload: Any, ctx: FireContext) -> list[str]:
    return [] if case.eligibility else ["eligibility has not been recorded"]


def consent_signed(case: Case, payload: Any, ctx: FireContext) -> list[str]:
    if case.eligibility and case.eligibility.consent_signed_on:
        return []
    return ["the applicant's signed consent is missing"]


def not_eu_eea_citizen(case: Case, payload: Any, ctx: FireContext) -> list[str]:
    if case.eligibility and case.eligibility.nationality in EU_EEA:
        return ["the applicant is an EU/EEA citizen"]
    return []


def no_expulsion_order(case: Case, payload: Any, ctx: FireContext) -> list[str]:
    if case.eligibility and case.eligibility.expulsion_order:
        return ["there is an expulsion order from the Police and Border Guard Board"]
    return []


def travel_document_present_or_requested(case: Case, payload: Any, ctx: FireContext) -> list[str]:
    if case.eligibility and case.eligibility.travel_document in ("present", "requested"):
        return []
    return ["no identity or travel document is present or requested"]


def asylum_claim_settled(case: Case, payload: Any, ctx: FireContext) -> list[str]:
    e = case.eligibility
    if e is None or e.asylum_status in ("none", "withdrawn", "closed"):
        return []
    if e.asylum_status == "pending" and e.return_chosen_while_pending:
        return []
    return ["the asylum claim is pending and the family has not chosen return while it is pending"]


def arrival_after_departure(case: Case, payload: Any, ctx: FireContext) -> list[str]:
    if case.departure_on and payload.arrived_on < case.departure_on:
        return ["arrival is dated before the departure"]
    return []


def departure_ahead(case: Case, payload: Any, ctx: FireContext) -> list[str]:
    """A reminder that fell due late (workers down) is not sent once the departure day is over."""
    if case.departure_on is None or ctx.now.date() > case.departure_on:
        return ["the departure date has passed"]
    return []


def plan_lines_name_household_members(case: Case, payload: Any, ctx: FireContext) -> list[str]:
    known = {m.id for m in case.members or ()}
    return [
        f"budget line names member {line.member_id}, who is not in this household"
        for line in payload.lines
        if line.member_id not in known
    ]


def has_plan(case: Case, payload: Any, ctx: FireContext) -> list[str]:
    return [] if case.plan else ["the case has no reintegration plan"]


def four_eyes(case: Case, payload: Any, ctx: FireContext) -> list[str]:
    if case.plan and case.plan.approved_by == ctx.actor.id:
        return ["four eyes: the approver of this plan cannot disburse against it"]
    return []


def cash_allowed(case: Case, payload: Any, ctx: FireContext) -> list[str]:
    if payload.kind == "cash" and not ctx.programme.allow_cash:
        return ["cash assistance is switched off for this programme"]
    return []


def within_budget_line(case: Case, payload: Any, ctx: FireContext) -> list[str]:
    line = case.plan.line(payload.budget_line_id) if case.plan else None
    if line is None:
        return [f"budget line {payload.budget_line_id} is not in this case's plan"]
    if payload.currency != line.allocated.currency:
        return [f"budget line is in {line.allocated.currency}, not {payload.currency}"]
    if payload.amount > line.remaining.amount:
        return [f"disbursement of {payload.amount} exceeds the {line.remaining} left on the budget line"]
    return []


def has_disbursement(case: Case, payload: Any, ctx: FireContext) -> list[str]:
    return [] if case.plan and case.plan.disbursed_anything else ["nothing has been disbursed yet"]


def has_monitoring_visit_unless_contact_lost(case: Case, payload: Any, ctx: FireContext) -> list[str]:
    if case.last_visit_on or payload.outcome == "lost_contact":
        return []
    return ["no monitoring visit has been recorded (only a lost-contact closure needs none)"]
