"""Grants: the plan's budgets, the disbursements and the family's contributions; money is rate limited."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from workflow.adapters.grant_views import GrantViews
from workflow.api.context import Call, Caller
from workflow.api.problems import ApiProblem, responses

router = APIRouter(tags=["grants"])

# The triggers that request, approve or record money; each counts against the caller's money limit.
MONEY = frozenset(
    {
        "request_disbursement",
        "approve_disbursement",
        "reject_disbursement",
        "record_receipt",
        "record_contribution",
    }
)
READ = ("unauthenticated", "unknown_case", "rate_limited")


def limit_money(caller: Call) -> None:
    """Per actor, whatever the case: one budget for the money transitions and these reads."""
    caller.engine.auth.limit(caller.engine.settings.rate_limit_money, "money", caller.actor.id)


@router.get(
    "/cases/{case_id}/plan",
    summary="The reintegration plan: per member and category, allocated, requested, disbursed, remaining",
    description="Remaining is what may still be requested: neither disbursed nor awaiting approval. "
    "Amounts are decimal strings in the plan's currency.",
    responses=responses(*READ, "not_found"),
)
def case_plan(case_id: str, caller: Caller) -> dict[str, Any]:
    limit_money(caller)
    plan = GrantViews(caller.engine.app.db).plan(case_id, caller.actor)
    caller.log_access("read_plan", "ok", case_id)
    if plan is None:
        raise ApiProblem("not_found", "the case has no reintegration plan yet")
    return plan


@router.get(
    "/cases/{case_id}/disbursements",
    summary="Every disbursement, in the order requested: status, who requested and approved, receipts",
    responses=responses(*READ),
)
def case_disbursements(case_id: str, caller: Caller) -> list[dict[str, Any]]:
    limit_money(caller)
    disbursements = GrantViews(caller.engine.app.db).disbursements(case_id, caller.actor)
    caller.log_access("read_disbursements", "ok", case_id)
    return disbursements


@router.get(
    "/cases/{case_id}/contributions",
    summary="The family's own money: recorded beside the plan, never counted as grant",
    responses=responses(*READ),
)
def case_contributions(case_id: str, caller: Caller) -> list[dict[str, Any]]:
    limit_money(caller)
    contributions = GrantViews(caller.engine.app.db).contributions(case_id, caller.actor)
    caller.log_access("read_contributions", "ok", case_id)
    return contributions
