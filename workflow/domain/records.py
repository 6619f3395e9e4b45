"""The records a case owns besides its plan: household, eligibility, visits, tasks, timers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from workflow.domain.money import Money


@dataclass(slots=True)
class HouseholdMember:
    id: str
    full_name: str
    date_of_birth: date
    relationship: str
    phone: str | None = None
    email: str | None = None


@dataclass(frozen=True, slots=True)
class Eligibility:
    nationality: str
    expulsion_order: bool
    consent_signed_on: date | None
    travel_document: str
    asylum_status: str
    return_chosen_while_pending: bool


@dataclass(frozen=True, slots=True)
class Contribution:
    """The family's own money: recorded beside the plan, never counted as grant."""

    id: str
    amount: Money
    purpose: str
    recorded_by: str
    recorded_at: datetime


@dataclass(frozen=True, slots=True)
class MonitoringVisit:
    id: str
    visited_on: date
    kind: str
    plan_on_track: bool
    notes: str | None
    recorded_by: str


@dataclass(slots=True)
class Task:
    id: str
    kind: str  # request_travel_documents, pre_arrival_notice, airport_reception, ...
    status: str  # open, done, cancelled
    due_on: date | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Timer:
    """A durable deadline: a row that beat claims when due, never a broker ETA."""

    id: str
    name: str
    state: str  # the case state that started it; leaving that state cancels it
    due_at: datetime
    fires_trigger: str
    created_at: datetime
