"""Follow-up tasks: the workers open them, staff of the task's office complete them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from workflow.domain.actors import Actor, Role
from workflow.domain.errors import PermissionDenied, TaskClosed, UnknownTask

OPEN, DONE, CANCELLED = "open", "done", "cancelled"
STATUSES = (OPEN, DONE, CANCELLED)
# Office staff do the work; ops watch the machinery and system actors are automation.
STAFF = frozenset({Role.CASEWORKER, Role.APPROVER, Role.TRAVEL_OFFICER, Role.FINANCE_OFFICER})


@dataclass(frozen=True, slots=True)
class Task:
    """A task as its office sees it: what to do for which case by when; no personal data."""

    id: str
    case_id: str
    kind: str
    status: str
    office: str
    due_on: date | None
    created_at: datetime
    completed_at: datetime | None
    completed_by: str | None


def check_completion(task: Task | None, task_id: str, actor: Actor) -> bool:
    """Whether completing ``task`` (as the actor may see it: None when not) has anything to do:
    False when it is done already (completing twice is a no-op, so a retried request is safe).
    Only the office's staff complete its tasks (ops and system actors, who may see them, may
    not); another office's task is unknown; a cancelled one cannot be completed."""
    if task is None:
        raise UnknownTask(task_id)
    if not actor.roles & STAFF:
        raise PermissionDenied(f"completing a task takes a staff role of office {task.office}")
    if actor.office != task.office:
        raise UnknownTask(task_id)
    if task.status == CANCELLED:
        raise TaskClosed(task_id, task.status)
    return task.status == OPEN
