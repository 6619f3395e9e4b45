"""The seed family's story (DOMAIN.md, acceptance story) as data, run through the engine."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from workflow.domain.actors import Actor, Role
from workflow.service_layer.transitions import FireResult, TransitionService

# code, name, country, handover endpoint (none: the same deployment), staff notice e-mail
ORIGIN = ("tallinn", "IOM Tallinn", "EE", None, "tallinn-office@avrr.example.org")
DESTINATION = ("kyiv", "IOM Kyiv", "UA", None, "kyiv-office@avrr.example.org")

# People in the two offices; four eyes needs distinct approvers and finance officers.
TLL_CASEWORKER = Actor.of("tll-caseworker", "tallinn", Role.CASEWORKER)
TLL_APPROVER = Actor.of("tll-approver", "tallinn", Role.APPROVER)
TLL_TRAVEL = Actor.of("tll-travel", "tallinn", Role.TRAVEL_OFFICER)
KBP_CASEWORKER = Actor.of("kyiv-caseworker", "kyiv", Role.CASEWORKER)
KBP_FINANCE = Actor.of("kyiv-finance", "kyiv", Role.FINANCE_OFFICER)
KBP_FINANCE_LEAD = Actor.of("kyiv-finance-lead", "kyiv", Role.FINANCE_OFFICER)  # approves the spending
KBP_APPROVER = Actor.of("kyiv-approver", "kyiv", Role.APPROVER)

TODAY = date.today()

# Fictitious names: the real family is never in code or logs.
HOUSEHOLD = [
    {
        "full_name": "Demo Principal",
        "date_of_birth": "1987-03-14",
        "relationship": "principal",
        "phone": "+372 5555 0101",
        "email": "principal@example.org",
    },
    {"full_name": "Demo Spouse", "date_of_birth": "1990-07-02", "relationship": "spouse"},
    {
        "full_name": "Demo Child One",
        "date_of_birth": str(TODAY.replace(year=TODAY.year - 8) - timedelta(days=40)),
        "relationship": "child",
    },
    {
        "full_name": "Demo Child Two",
        "date_of_birth": str(TODAY.replace(year=TODAY.year - 3) - timedelta(days=90)),
        "relationship": "child",
    },
]


@dataclass
class Step:
    trigger: str
    actor: Actor
    payload: Callable[[dict[str, Any]], dict[str, Any]] | dict[str, Any] = field(default_factory=dict)
    note: str = ""


def _plan(case: dict[str, Any]) -> dict[str, Any]:
    principal, spouse, child1, child2 = (m["id"] for m in case["members"])
    return {
        "currency": "EUR",
        "lines": [
            {
                "member_id": principal,
                "category": "business",
                "amount": "2000.00",
                "purpose": "children's play room: renovation",
            },
            {
                "member_id": spouse,
                "category": "business",
                "amount": "2000.00",
                "purpose": "children's play room: decoration and equipment",
            },
            {
                "member_id": child1,
                "category": "education",
                "amount": "700.00",
                "purpose": "school uniform, stationery, books, sport training",
            },
            {
                "member_id": child2,
                "category": "education",
                "amount": "700.00",
                "purpose": "clothes and kindergarten fees",
            },
        ],
    }


def _request(index: int, amount: str, vendor: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def build(case: dict[str, Any]) -> dict[str, Any]:
        line = case["plan"]["lines"][index]
        return {
            "budget_line_id": line["id"],
            "amount": amount,
            "currency": "EUR",
            "vendor": vendor,
            "kind": "in_kind",
        }

    return build


def _latest(status: str, **fields: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The case's most recent disbursement in ``status`` (IndexError if there is none)."""

    def build(case: dict[str, Any]) -> dict[str, Any]:
        found = [d for d in (case["plan"] or {}).get("disbursements", ()) if d["status"] == status]
        return {"disbursement_id": found[-1]["id"], **fields}

    return build


def _tranche(requester: Actor, index: int, amount: str, vendor: str, receipt: str) -> list[Step]:
    """Four eyes on money: one person requests, another finance officer approves; the
    requester, who deals with the supplier, records the receipt."""
    return [
        Step("request_disbursement", requester, _request(index, amount, vendor)),
        Step("approve_disbursement", KBP_FINANCE_LEAD, _latest("requested")),
        Step("record_receipt", requester, _latest("approved", receipt_ref=receipt)),
    ]


STEPS: list[Step] = [
    Step(
        "record_eligibility",
        TLL_CASEWORKER,
        {
            "nationality": "UA",
            "expulsion_order": False,
            "consent_signed_on": str(TODAY),
            "travel_document": "requested",
            "asylum_status": "pending",
            "return_chosen_while_pending": True,
        },
        "asylum decision still pending; the family chose return",
    ),
    Step("submit_application", TLL_CASEWORKER),
    Step("approve_return", TLL_APPROVER),
    Step("request_travel_documents", TLL_TRAVEL),
    Step("record_travel_documents", TLL_TRAVEL, {"document_kind": "travel_certificate"}),
    Step(
        "book_travel",
        TLL_TRAVEL,
        {"departure_on": str(TODAY + timedelta(days=14)), "route": "TLL-WAW, rail to Kyiv", "carrier": "LOT"},
    ),
    Step("confirm_departure", TLL_TRAVEL),
    Step("confirm_arrival", KBP_CASEWORKER, {"arrived_on": str(TODAY + timedelta(days=15))}),
    Step("send_handover", TLL_CASEWORKER),
    Step("accept_handover", KBP_CASEWORKER),
    Step("record_returnee_contact", KBP_CASEWORKER),
    Step("draft_plan", KBP_CASEWORKER, _plan, "play room business; education for both children"),
    Step("submit_plan", KBP_CASEWORKER),
    Step("approve_plan", TLL_APPROVER),
    *_tranche(KBP_FINANCE, 0, "1450.00", "Budmarket hardware", "R-1001"),
    *_tranche(KBP_FINANCE, 1, "1800.00", "Dytyachyi Svit toys", "R-1002"),
    *_tranche(KBP_CASEWORKER, 2, "390.00", "School outfitters", "R-1003"),
    *_tranche(KBP_CASEWORKER, 2, "240.00", "Sport club (3 months)", "R-1004"),
    *_tranche(KBP_CASEWORKER, 3, "600.00", "Kindergarten fees", "R-1005"),
    Step(
        "record_contribution",
        KBP_CASEWORKER,
        {"amount": "900.00", "currency": "EUR", "purpose": "rent of the premises (family's own funds)"},
    ),
    Step("complete_disbursement", KBP_FINANCE),
    Step(
        "record_monitoring_visit",
        KBP_CASEWORKER,
        {"visited_on": str(TODAY + timedelta(days=120)), "kind": "home_visit", "plan_on_track": True},
    ),
    Step(
        "record_monitoring_visit",
        KBP_CASEWORKER,
        {"visited_on": str(TODAY + timedelta(days=210)), "kind": "phone", "plan_on_track": True},
    ),
    Step(
        "close", KBP_APPROVER, {"outcome": "reintegrated", "reason": "business running, children in school"}
    ),
]


def run_story(service: TransitionService, view: Callable[[str], dict[str, Any]]) -> Iterator[FireResult]:
    """Registers the family and walks every step; yields each result as it commits."""
    created = service.create_case(
        TLL_CASEWORKER,
        {
            "origin_office": ORIGIN[0],
            "destination_office": DESTINATION[0],
            "language": "uk",
            "channel": "walk_in",
            "members": HOUSEHOLD,
        },
    )
    yield created
    for step in STEPS:
        payload = step.payload(view(created.case_id)) if callable(step.payload) else step.payload
        yield service.fire(created.case_id, step.trigger, step.actor, payload)
