"""The Individual Reintegration Plan: budgets per member and category, and what was spent."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from workflow.domain.money import Money


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
        return Money(self.allocated.amount - self.disbursed.amount, self.allocated.currency)


@dataclass(slots=True)
class Plan:
    id: str
    currency: str
    drafted_by: str
    drafted_at: datetime
    lines: list[BudgetLine] = field(default_factory=list)
    approved_by: str | None = None
    approved_at: datetime | None = None

    def line(self, line_id: str) -> BudgetLine | None:
        return next((line for line in self.lines if line.id == line_id), None)

    @property
    def disbursed_anything(self) -> bool:
        return any(line.disbursed.amount > 0 for line in self.lines)


@dataclass(frozen=True, slots=True)
class Disbursement:
    """One in-kind (or, where the programme allows, cash) tranche against a budget line."""

    id: str
    budget_line_id: str
    amount: Money
    kind: str
    vendor: str
    receipt_ref: str
    disbursed_by: str
    disbursed_at: datetime
