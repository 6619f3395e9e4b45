"""The case aggregate: its state changes only through the lifecycle machine."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from workflow.domain import payloads as p
from workflow.domain.changes import (
    Change,
    ContributionRecorded,
    Disbursed,
    DisbursementRejected,
    DisbursementRequested,
    HouseholdReplaced,
    MembersAdded,
    PlanApproved,
    PlanDrafted,
    ReceiptRecorded,
    VisitRecorded,
)
from workflow.domain.money import Money
from workflow.domain.plan import APPROVED, RECEIPTED, REJECTED, BudgetLine, Disbursement, Plan
from workflow.domain.programme import FireContext
from workflow.domain.records import (
    Contribution,
    Eligibility,
    HouseholdMember,
    MonitoringVisit,
)

NEW = "new"  # the pseudo-state of a case not yet registered


def new_id() -> str:
    return str(uuid.uuid4())


@dataclass(eq=False, slots=True)
class Case:
    id: str
    lifecycle_version: str
    origin_office: str = ""
    destination_office: str = ""
    owner_office: str = ""
    language: str = "en"
    channel: str = "walk_in"
    _state: str = NEW
    version: int = 0
    state_entered_at: datetime | None = None
    # When the destination office began to see the case (see lifecycle ``Transition.shares``).
    shared_at: datetime | None = None
    eligibility: Eligibility | None = None
    document_kind: str | None = None
    departure_on: date | None = None
    route: str | None = None
    carrier: str | None = None
    arrived_on: date | None = None
    last_contact_on: date | None = None
    last_visit_on: date | None = None
    outcome: str | None = None
    # Loaded only when a transition declares it needs them (see lifecycle ``needs``).
    members: list[HouseholdMember] | None = None
    plan: Plan | None = None
    changes: list[Change] = field(default_factory=list)

    @classmethod
    def new(cls, lifecycle_version: str, case_id: str | None = None) -> Case:
        return cls(id=case_id or new_id(), lifecycle_version=lifecycle_version)

    @property
    def state(self) -> str:
        """Read-only: only a transition moves a case (see ``machine.fire``)."""
        return self._state

    def _enter(self, state: str, now: datetime) -> None:
        if state != self._state:
            self.state_entered_at = now
        self._state = state
        self.version += 1

    def _share(self, now: datetime) -> None:
        """Shared once, for good: the first sharing transition's time stays."""
        if self.shared_at is None:
            self.shared_at = now

    @property
    def is_new(self) -> bool:
        return self._state == NEW

    # Effects: one per transition that changes more than the state. Called by
    # the machine after guards passed; they record changes, never do I/O. One that
    # returns a payload has history record that instead of the one it was given.

    def register(self, payload: p.RegisterInquiry, ctx: FireContext) -> None:
        self.origin_office = payload.origin_office
        self.destination_office = payload.destination_office
        self.owner_office = payload.origin_office
        self.language = payload.language
        self.channel = payload.channel
        self.members = [
            HouseholdMember(new_id(), m.full_name, m.date_of_birth, m.relationship, m.phone, m.email)
            for m in payload.members
        ]
        self.changes.append(MembersAdded(tuple(self.members)))

    def record_eligibility(self, payload: p.RecordEligibility, ctx: FireContext) -> None:
        self.eligibility = Eligibility(
            nationality=payload.nationality.upper(),
            expulsion_order=payload.expulsion_order,
            consent_signed_on=payload.consent_signed_on,
            travel_document=payload.travel_document,
            asylum_status=payload.asylum_status,
            return_chosen_while_pending=payload.return_chosen_while_pending,
        )

    def record_travel_documents(self, payload: p.RecordTravelDocuments, ctx: FireContext) -> None:
        self.document_kind = payload.document_kind

    def book_travel(self, payload: p.BookTravel, ctx: FireContext) -> None:
        self.departure_on, self.route, self.carrier = payload.departure_on, payload.route, payload.carrier

    def confirm_arrival(self, payload: p.ConfirmArrival, ctx: FireContext) -> None:
        self.arrived_on = payload.arrived_on

    def receive_handover(self, payload: p.ReceiveHandover, ctx: FireContext) -> None:
        self.origin_office = self.owner_office = payload.origin_office  # the origin's until accepted
        self.destination_office = payload.destination_office
        self.language, self.channel = payload.language, "referral"
        self.departure_on, self.route = payload.departure_on, payload.route
        self.arrived_on = payload.arrived_on
        self.members = [
            HouseholdMember(m.id, m.full_name, m.date_of_birth, m.relationship, m.phone, m.email)
            for m in payload.members
        ]
        self.changes.append(MembersAdded(tuple(self.members)))

    def receive_handover_again(self, payload: p.ReceiveHandover, ctx: FireContext) -> None:
        """The journey, language and household as the new package has them: the origin may have
        corrected any of them after the refusal (a phone number, a member added or removed).
        Nothing here refers to the members yet: a plan is drafted only after acceptance."""
        self.language = payload.language
        self.departure_on, self.route = payload.departure_on, payload.route
        self.arrived_on = payload.arrived_on
        self.members = [
            HouseholdMember(m.id, m.full_name, m.date_of_birth, m.relationship, m.phone, m.email)
            for m in payload.members
        ]
        self.changes.append(HouseholdReplaced(tuple(self.members)))

    def accept_handover(self, payload: Any, ctx: FireContext) -> None:
        self.owner_office = self.destination_office

    def record_returnee_contact(self, payload: Any, ctx: FireContext) -> None:
        self.last_contact_on = ctx.now.date()

    def draft_plan(self, payload: p.DraftPlan, ctx: FireContext) -> None:
        lines = [
            BudgetLine(
                new_id(),
                line.member_id,
                line.category,
                Money(line.amount, payload.currency),
                Money.from_minor(0, payload.currency),
                line.purpose,
            )
            for line in payload.lines
        ]
        self.plan = Plan(new_id(), payload.currency, ctx.actor.id, ctx.now, lines)
        self.changes.append(PlanDrafted(self.plan))

    def approve_plan(self, payload: Any, ctx: FireContext) -> None:
        assert self.plan is not None  # guaranteed by the has_plan guard
        self.plan.approved_by, self.plan.approved_at = ctx.actor.id, ctx.now
        self.changes.append(PlanApproved(self.plan.id, ctx.actor.id, ctx.now))

    # Disbursements: the guards have checked that the plan, the line and the referenced
    # disbursement exist and that the request is in the status the transition needs.

    def request_disbursement(self, payload: p.RequestDisbursement, ctx: FireContext) -> None:
        plan = self._plan()
        d = Disbursement(
            new_id(),
            payload.budget_line_id,
            Money(payload.amount, payload.currency),
            payload.kind,
            payload.vendor,
            ctx.actor.id,
            ctx.now,
            position=len(plan.disbursements),
        )
        plan.disbursements.append(d)
        self.changes.append(DisbursementRequested(d))

    def approve_disbursement(self, payload: p.ApproveDisbursement, ctx: FireContext) -> p.GrantDisbursed:
        """Commits the money; returns what history records of it (the line, amount, currency)."""
        d = self._disbursement(payload.disbursement_id)
        line = self._plan().line(d.budget_line_id)
        assert line is not None
        line.disbursed = Money(line.disbursed.amount + d.amount.amount, d.amount.currency)
        d.status, d.approved_by, d.approved_at = APPROVED, ctx.actor.id, ctx.now
        self.changes.append(Disbursed(d.id, d.budget_line_id, d.amount, ctx.actor.id, ctx.now))
        return p.GrantDisbursed(d.id, d.budget_line_id, d.amount.amount, d.amount.currency)

    def reject_disbursement(self, payload: p.RejectDisbursement, ctx: FireContext) -> None:
        d = self._disbursement(payload.disbursement_id)
        d.status, d.rejected_by, d.rejected_at = REJECTED, ctx.actor.id, ctx.now
        self.changes.append(DisbursementRejected(d.id, ctx.actor.id, ctx.now))

    def record_receipt(self, payload: p.RecordReceipt, ctx: FireContext) -> None:
        d = self._disbursement(payload.disbursement_id)
        d.status, d.receipt_ref = RECEIPTED, payload.receipt_ref
        d.receipt_recorded_by, d.receipt_recorded_at = ctx.actor.id, ctx.now
        self.changes.append(ReceiptRecorded(d.id, payload.receipt_ref, ctx.actor.id, ctx.now))

    def _plan(self) -> Plan:
        assert self.plan is not None  # guaranteed by the plan_approved guard
        return self.plan

    def _disbursement(self, disbursement_id: str) -> Disbursement:
        d = self._plan().disbursement(disbursement_id)
        assert d is not None  # guaranteed by the guard on the disbursement's status
        return d

    def record_contribution(self, payload: p.RecordContribution, ctx: FireContext) -> None:
        money = Money(payload.amount, payload.currency)
        self.changes.append(
            ContributionRecorded(Contribution(new_id(), money, payload.purpose, ctx.actor.id, ctx.now))
        )

    def record_monitoring_visit(self, payload: p.RecordMonitoringVisit, ctx: FireContext) -> None:
        self.last_visit_on = payload.visited_on
        visit = MonitoringVisit(
            new_id(), payload.visited_on, payload.kind, payload.plan_on_track, payload.notes, ctx.actor.id
        )
        self.changes.append(VisitRecorded(visit))

    def redirect_handover(self, payload: p.RedirectHandover, ctx: FireContext) -> None:
        self.destination_office = payload.destination_office
        self.shared_at = None  # the new office sees the case from the handover sent to it

    def close_without_handover(self, payload: p.Reason, ctx: FireContext) -> None:
        self.outcome = "not_handed_over"

    def close(self, payload: p.Close, ctx: FireContext) -> None:
        self.outcome = payload.outcome
