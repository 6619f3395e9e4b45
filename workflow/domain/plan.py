"""The Individual Reintegration Plan: budgets per member and category, and what was spent."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from workflow.domain.money import Money

# A disbursement's life: requested, then approved (the money is committed: the line's
# disbursed amount grows) or rejected; an approved one is done once its receipt is recorded.
REQUESTED, APPROVED, REJECTED, RECEIPTED = "requested", "approved", "rejected", "receipted"


@dataclass(slots=True)
class BudgetLine:
    id: str
    member_id: str
    category: str
    allocated: Money
    disbursed: Money
    purpose: str = ""

    @property
    def remaining(self) -> Money:
        """What is not yet disbursed; requests awaiting approval are not counted here."""
        return Money(self.allocated.amount - self.disbursed.amount, self.allocated.currency)


@dataclass(slots=True)
class Disbursement:
    """One in-kind (or, where the programme allows, cash) tranche against a budget line."""

    id: str
    budget_line_id: str
    amount: Money
    kind: str
    vendor: str
    requested_by: str | None  # None: disbursed in one step, before requests needed approval
    requested_at: datetime
    position: int  # the order the case's disbursements were requested in
    status: str = REQUESTED
    approved_by: str | None = None
    approved_at: datetime | None = None
    receipt_ref: str | None = None
    receipt_recorded_by: str | None = None
    receipt_recorded_at: datetime | None = None
    rejected_by: str | None = None
    rejected_at: datetime | None = None


@dataclass(slots=True)
class Plan:
    id: str
    currency: str
    drafted_by: str
    drafted_at: datetime
    lines: list[BudgetLine] = field(default_factory=list)
    approved_by: str | None = None
    approved_at: datetime | None = None
    disbursements: list[Disbursement] = field(default_factory=list)

    def line(self, line_id: str) -> BudgetLine | None:
        return next((line for line in self.lines if line.id == line_id), None)

    def disbursement(self, disbursement_id: str) -> Disbursement | None:
        return next((d for d in self.disbursements if d.id == disbursement_id), None)

    def with_status(self, status: str) -> list[Disbursement]:
        return [d for d in self.disbursements if d.status == status]

    def requested(self, line: BudgetLine, excluding: str | None = None) -> Money:
        """Requested on the line and awaiting approval (leaving out ``excluding``)."""
        total = sum(
            (
                d.amount.amount
                for d in self.with_status(REQUESTED)
                if d.budget_line_id == line.id and d.id != excluding
            ),
            Decimal(0),
        )
        return Money(total, line.allocated.currency)

    def available(self, line: BudgetLine, excluding: str | None = None) -> Money:
        """What may still be requested: neither disbursed nor awaiting approval."""
        pending = self.requested(line, excluding).amount
        return Money(line.remaining.amount - pending, line.allocated.currency)

    @property
    def disbursed_anything(self) -> bool:
        return any(line.disbursed.amount > 0 for line in self.lines)
