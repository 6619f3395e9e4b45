"""In-memory cases, actors and payloads for the unit tests, derived from the lifecycle table."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from workflow.domain.actors import SYSTEM_ACTOR, Actor, Role
from workflow.domain.case import Case
from workflow.domain.lifecycle import DESTINATION, LIFECYCLE, ORIGIN, Transition
from workflow.domain.machine import LifecycleMachine, machine_for
from workflow.domain.money import Money
from workflow.domain.plan import APPROVED, RECEIPTED, REQUESTED, BudgetLine, Disbursement, Plan
from workflow.domain.programme import FireContext, Programme
from workflow.domain.records import Eligibility, HouseholdMember
from workflow.service_layer.payloads import parse_payload

NOW = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
OFFICE_ON = {ORIGIN: "tallinn", DESTINATION: "kyiv"}
STRANGER_OFFICE = "riga"  # on neither side of any test case

# Periods that differ from each other and from the defaults, so a swapped setting shows.
PROGRAMME = Programme(
    handover_ack_period=timedelta(days=3),
    returnee_contact_period=timedelta(days=41),
    plan_drafting_period=timedelta(days=17),
    monitoring_interval=timedelta(days=67),
    departure_reminder_lead=timedelta(days=4),
)

PRINCIPAL_ID = "member-principal"
LINE_ID = "line-business"
PLAN_APPROVER_ID = "approver-who-approved-the-plan"
REQUESTER_ID = "caseworker-who-requested"
FINANCE_LEAD_ID = "finance-lead-who-approved"
# The default plan's tranches: one done, one approved awaiting its receipt, one awaiting approval.
RECEIPTED_ID, APPROVED_ID, REQUESTED_ID = "tranche-receipted", "tranche-approved", "tranche-requested"
DEPARTURE_ON = date(2026, 12, 1)

# One valid raw payload per payload class the lifecycle names (as a client would send it).
SAMPLE_PAYLOADS: dict[str, dict[str, Any]] = {
    "NoPayload": {},
    "Reason": {"reason": "the family asked to wait"},
    "RedirectHandover": {"destination_office": "riga", "reason": "the family settles in Latvia"},
    "RegisterInquiry": {
        "origin_office": OFFICE_ON[ORIGIN],
        "destination_office": OFFICE_ON[DESTINATION],
        "language": "uk",
        "channel": "walk_in",
        "members": [
            {"full_name": "Test Principal", "date_of_birth": "1987-03-14", "relationship": "principal"},
            {"full_name": "Test Child", "date_of_birth": "2019-05-01", "relationship": "child"},
        ],
    },
    "ReceiveHandover": {
        "origin_office": OFFICE_ON[ORIGIN],
        "destination_office": OFFICE_ON[DESTINATION],
        "language": "uk",
        "members": [
            {
                "id": PRINCIPAL_ID,
                "full_name": "Test Principal",
                "date_of_birth": "1987-03-14",
                "relationship": "principal",
            },
        ],
        "departure_on": str(DEPARTURE_ON),
        "route": "TLL-WAW",
        "arrived_on": str(DEPARTURE_ON + timedelta(days=1)),
    },
    "RecordEligibility": {
        "nationality": "UA",
        "consent_signed_on": "2026-11-20",
        "travel_document": "requested",
        "asylum_status": "pending",
        "return_chosen_while_pending": True,
    },
    "RecordTravelDocuments": {"document_kind": "travel_certificate"},
    "BookTravel": {"departure_on": str(DEPARTURE_ON), "route": "TLL-WAW", "carrier": "LOT"},
    "ConfirmArrival": {"arrived_on": str(DEPARTURE_ON + timedelta(days=1))},
    "DraftPlan": {
        "currency": "EUR",
        "lines": [{"member_id": PRINCIPAL_ID, "category": "business", "amount": "2000.00"}],
    },
    "RequestDisbursement": {
        "budget_line_id": LINE_ID,
        "amount": "150.00",
        "currency": "EUR",
        "vendor": "Hardware shop",
    },
    "ApproveDisbursement": {"disbursement_id": REQUESTED_ID},
    "RejectDisbursement": {"disbursement_id": REQUESTED_ID, "reason": "the invoice is a duplicate"},
    "RecordReceipt": {"disbursement_id": APPROVED_ID, "receipt_ref": "R-1"},
    "RecordContribution": {"amount": "90.00", "currency": "EUR", "purpose": "rent of the premises"},
    "RecordMonitoringVisit": {"visited_on": "2027-03-01", "kind": "home_visit", "plan_on_track": True},
    "Close": {"outcome": "reintegrated"},
}


def machine() -> LifecycleMachine:
    return machine_for(LIFECYCLE.version)


def raw_payload(t: Transition) -> dict[str, Any]:
    return copy.deepcopy(SAMPLE_PAYLOADS[t.payload.__name__])


def payload_for(t: Transition) -> Any:
    return parse_payload(t.payload, raw_payload(t))


def eligible() -> Eligibility:
    return Eligibility(
        nationality="UA",
        expulsion_order=False,
        consent_signed_on=date(2026, 11, 20),
        travel_document="requested",
        asylum_status="none",
        return_chosen_while_pending=False,
    )


def household() -> list[HouseholdMember]:
    return [HouseholdMember(PRINCIPAL_ID, "Test Principal", date(1987, 3, 14), "principal")]


def tranche(
    disbursement_id: str,
    amount: str,
    status: str,
    requested_by: str = REQUESTER_ID,
    kind: str = "in_kind",
    position: int = 0,
) -> Disbursement:
    d = Disbursement(
        disbursement_id,
        LINE_ID,
        Money(Decimal(amount), "EUR"),
        kind,
        "Hardware shop",
        requested_by,
        NOW - timedelta(days=3),
        position,
        status,
    )
    if status in (APPROVED, RECEIPTED):
        d.approved_by, d.approved_at = FINANCE_LEAD_ID, NOW - timedelta(days=2)
    if status == RECEIPTED:
        d.receipt_ref, d.receipt_recorded_by, d.receipt_recorded_at = "R-0", REQUESTER_ID, NOW
    return d


def default_tranches() -> list[Disbursement]:
    """100.00 disbursed (60.00 receipted, 40.00 awaiting its receipt), 50.00 awaiting approval."""
    return [
        tranche(RECEIPTED_ID, "60.00", RECEIPTED, position=0),
        tranche(APPROVED_ID, "40.00", APPROVED, position=1),
        tranche(REQUESTED_ID, "50.00", REQUESTED, position=2),
    ]


def settled_tranches() -> list[Disbursement]:
    """100.00 disbursed, every receipt in, nothing awaiting approval: disbursement may complete."""
    return [tranche(RECEIPTED_ID, "60.00", RECEIPTED), tranche(APPROVED_ID, "40.00", RECEIPTED, position=1)]


def approved_plan(allocated: str = "1000.00", tranches: list[Disbursement] | None = None) -> Plan:
    """One budget line; what is disbursed on it is what its approved tranches add up to."""
    tranches = default_tranches() if tranches is None else tranches
    disbursed = sum((d.amount.amount for d in tranches if d.status in (APPROVED, RECEIPTED)), Decimal(0))
    line = BudgetLine(
        LINE_ID, PRINCIPAL_ID, "business", Money(Decimal(allocated), "EUR"), Money(disbursed, "EUR")
    )
    return Plan(
        "plan-1",
        "EUR",
        "drafter",
        NOW - timedelta(days=10),
        [line],
        approved_by=PLAN_APPROVER_ID,
        approved_at=NOW - timedelta(days=5),
        disbursements=tranches,
    )


def case_in(state: str, parts: Iterable[str] = ("members", "plan"), version: int = 7, **fields: Any) -> Case:
    """A case in ``state`` that satisfies every guard; members and plan only if ``parts`` names them.

    Loading only the parts a transition declares in ``needs`` mirrors the repository.
    """
    parts = set(parts)
    values: dict[str, Any] = {
        "id": "case-1",
        "lifecycle_version": LIFECYCLE.version,
        "_state": state,
        "version": version,
        "state_entered_at": NOW - timedelta(days=1),
        "eligibility": eligible(),
        "departure_on": DEPARTURE_ON,
        "last_visit_on": date(2027, 2, 1),
        "members": household() if "members" in parts else None,
        "plan": approved_plan() if "plan" in parts else None,
    }
    if state != LIFECYCLE.initial:
        values.update(
            origin_office=OFFICE_ON[ORIGIN],
            destination_office=OFFICE_ON[DESTINATION],
            owner_office=OFFICE_ON[ORIGIN],
        )
    values.update(fields)
    return Case(**values)


# The one trigger whose guards the default case cannot meet: it needs every tranche settled,
# while record_receipt (from the same state) needs one awaiting its receipt.
SETTLED_FOR = frozenset({"complete_disbursement"})


def case_for(t: Transition, source: str, version: int = 7) -> Case:
    """A case in ``source`` holding only ``t``'s needs, on which ``t``'s guards all pass."""
    case = case_in(source, parts=t.needs, version=version)
    if t.trigger in SETTLED_FOR and case.plan:
        case.plan = approved_plan(tranches=settled_tranches())
    return case


def actor_for(t: Transition, role: Role, office: str | None = None) -> Actor:
    """An actor holding ``role`` in an office on the transition's first side (or in ``office``)."""
    if role is Role.SYSTEM and t.roles == {Role.SYSTEM}:
        return SYSTEM_ACTOR  # the office-less timers
    office = office or OFFICE_ON[t.sides[0]]
    return Actor.of(f"{role.value}@{office}", office, role)


def first_role(t: Transition) -> Role:
    return sorted(t.roles)[0]


def ctx(actor: Actor, programme: Programme = PROGRAMME, now: datetime = NOW) -> FireContext:
    return FireContext(actor, now, programme)


def snapshot(case: Case) -> dict[str, Any]:
    """Every field of the case, deep-copied: equal snapshots mean the fire changed nothing."""
    return {name: copy.deepcopy(getattr(case, name)) for name in Case.__slots__}
