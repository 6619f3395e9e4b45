"""Programme settings the rules depend on (cash allowed, deadlines), passed into the domain."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from workflow.domain.actors import Actor


@dataclass(frozen=True, slots=True)
class Programme:
    allow_cash: bool = False
    handover_ack_period: timedelta = timedelta(days=5)
    returnee_contact_period: timedelta = timedelta(days=90)
    plan_drafting_period: timedelta = timedelta(days=30)
    monitoring_interval: timedelta = timedelta(days=90)
    departure_reminder_lead: timedelta = timedelta(days=2)

    @property
    def departure_reminder_offset(self) -> timedelta:
        """A deadline adds its period to its start; the reminder falls its lead before departure."""
        return -self.departure_reminder_lead


@dataclass(frozen=True, slots=True)
class FireContext:
    """Everything a guard or effect may consult besides the case and the payload."""

    actor: Actor
    now: datetime
    programme: Programme
