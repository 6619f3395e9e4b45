"""What a transition changed besides the case row, for the repository to persist."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from workflow.domain.money import Money
from workflow.domain.plan import Disbursement, Plan
from workflow.domain.records import Contribution, HouseholdMember, MonitoringVisit, Timer


@dataclass(frozen=True, slots=True)
class MembersAdded:
    members: tuple[HouseholdMember, ...]


@dataclass(frozen=True, slots=True)
class HouseholdReplaced:
    """The case's household is these members now (a handover package sent again)."""

    members: tuple[HouseholdMember, ...]


@dataclass(frozen=True, slots=True)
class PlanDrafted:
    """Replaces any earlier, unapproved draft of the case's plan."""

    plan: Plan


@dataclass(frozen=True, slots=True)
class PlanApproved:
    plan_id: str
    approved_by: str
    approved_at: datetime


@dataclass(frozen=True, slots=True)
class DisbursementRequested:
    disbursement: Disbursement


@dataclass(frozen=True, slots=True)
class Disbursed:
    """An approved request. Persisted as a guarded increment of the budget line; the database
    refuses overspending."""

    disbursement_id: str
    budget_line_id: str
    amount: Money
    approved_by: str
    approved_at: datetime


@dataclass(frozen=True, slots=True)
class DisbursementRejected:
    disbursement_id: str
    rejected_by: str
    rejected_at: datetime


@dataclass(frozen=True, slots=True)
class ReceiptRecorded:
    disbursement_id: str
    receipt_ref: str
    recorded_by: str
    recorded_at: datetime


@dataclass(frozen=True, slots=True)
class ContributionRecorded:
    contribution: Contribution


@dataclass(frozen=True, slots=True)
class VisitRecorded:
    visit: MonitoringVisit


@dataclass(frozen=True, slots=True)
class TimerStarted:
    timer: Timer


@dataclass(frozen=True, slots=True)
class TimersCancelled:
    state: str


Change = (
    MembersAdded
    | HouseholdReplaced
    | PlanDrafted
    | PlanApproved
    | DisbursementRequested
    | Disbursed
    | DisbursementRejected
    | ReceiptRecorded
    | ContributionRecorded
    | VisitRecorded
    | TimerStarted
    | TimersCancelled
)
