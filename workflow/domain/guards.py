"""Guards: each returns the human-readable reasons a transition may not happen (empty: allowed)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from workflow.domain.case import Case
from workflow.domain.plan import APPROVED, REQUESTED, Disbursement
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


def another_destination(case: Case, payload: Any, ctx: FireContext) -> list[str]:
    office = getattr(payload, "destination_office", None)
    if office in (case.origin_office, case.destination_office):
        return [f"{office!r} is the case's origin or already its destination"]
    return []


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


def plan_approved(case: Case, payload: Any, ctx: FireContext) -> list[str]:
    if case.plan is None:
        return ["the case has no reintegration plan"]
    return [] if case.plan.approved_by else ["the reintegration plan is not approved"]


@dataclass(frozen=True, slots=True)
class _Tranche:
    """The spend a guard weighs: named by a request's payload, or by the request it approves."""

    line_id: str
    amount: Decimal
    currency: str
    kind: str
    disbursement_id: str | None


def _referenced(case: Case, payload: Any) -> Disbursement | None:
    return case.plan.disbursement(payload.disbursement_id) if case.plan else None


def _tranche(case: Case, payload: Any) -> _Tranche | None:
    if not hasattr(payload, "disbursement_id"):
        return _Tranche(payload.budget_line_id, payload.amount, payload.currency, payload.kind, None)
    d = _referenced(case, payload)
    if d is None:  # reported by the guard on the disbursement's status
        return None
    return _Tranche(d.budget_line_id, d.amount.amount, d.amount.currency, d.kind, d.id)


def _in_status(status: str, case: Case, payload: Any) -> list[str]:
    d = _referenced(case, payload)
    if d is None:
        return [f"disbursement {payload.disbursement_id} is not in this case's plan"]
    if d.status != status:
        return [f"disbursement {d.id} is {d.status}, not {status}"]
    return []


def disbursement_requested(case: Case, payload: Any, ctx: FireContext) -> list[str]:
    return _in_status(REQUESTED, case, payload)


def disbursement_approved(case: Case, payload: Any, ctx: FireContext) -> list[str]:
    return _in_status(APPROVED, case, payload)


def four_eyes(case: Case, payload: Any, ctx: FireContext) -> list[str]:
    """The money moves only with a second person: neither the requester nor the plan's approver."""
    reasons = []
    d = _referenced(case, payload)
    if d is not None and d.requested_by == ctx.actor.id:
        reasons.append("four eyes: whoever requested a disbursement cannot approve it")
    if case.plan and case.plan.approved_by == ctx.actor.id:
        reasons.append("four eyes: the approver of this plan cannot approve disbursements against it")
    return reasons


def cash_allowed(case: Case, payload: Any, ctx: FireContext) -> list[str]:
    tranche = _tranche(case, payload)
    if tranche and tranche.kind == "cash" and not ctx.programme.allow_cash:
        return ["cash assistance is switched off for this programme"]
    return []


def within_budget_line(case: Case, payload: Any, ctx: FireContext) -> list[str]:
    """Counts what is disbursed and what other requests await approval on the line."""
    tranche = _tranche(case, payload)
    if tranche is None or case.plan is None:
        return []
    line = case.plan.line(tranche.line_id)
    if line is None:
        return [f"budget line {tranche.line_id} is not in this case's plan"]
    if tranche.currency != line.allocated.currency:
        return [f"budget line is in {line.allocated.currency}, not {tranche.currency}"]
    available = case.plan.available(line, excluding=tranche.disbursement_id)
    if tranche.amount > available.amount:
        pending = case.plan.requested(line, excluding=tranche.disbursement_id)
        awaiting = f" besides {pending} requested and awaiting approval" if pending.amount else ""
        return [f"disbursement of {tranche.amount} exceeds the {available} left on the budget line{awaiting}"]
    return []


def has_disbursement(case: Case, payload: Any, ctx: FireContext) -> list[str]:
    return [] if case.plan and case.plan.disbursed_anything else ["nothing has been disbursed yet"]


def no_request_awaiting_approval(case: Case, payload: Any, ctx: FireContext) -> list[str]:
    waiting = case.plan.with_status(REQUESTED) if case.plan else []
    if waiting:
        ids = ", ".join(d.id for d in waiting)
        return [f"disbursement requests await approval or rejection: {ids}"]
    return []


def every_receipt_recorded(case: Case, payload: Any, ctx: FireContext) -> list[str]:
    missing = case.plan.with_status(APPROVED) if case.plan else []
    if missing:
        return [f"approved disbursements have no receipt yet: {', '.join(d.id for d in missing)}"]
    return []


def has_monitoring_visit_unless_contact_lost(case: Case, payload: Any, ctx: FireContext) -> list[str]:
    if case.last_visit_on or payload.outcome == "lost_contact":
        return []
    return ["no monitoring visit has been recorded (only a lost-contact closure needs none)"]
