"""Follow-up tasks: an office's work list, and completing a task."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from workflow.adapters.tasks import SqlTasks, TaskFilter, TaskPage
from workflow.api.context import Caller
from workflow.api.problems import responses
from workflow.domain.effects import TASK_KINDS
from workflow.domain.errors import InvalidPayload
from workflow.domain.tasks import OPEN, STATUSES, Task

router = APIRouter(tags=["tasks"])

Statuses = Annotated[
    list[str] | None,
    Query(
        description="Only tasks in one of these statuses (repeat for several); open by default",
        json_schema_extra={"items": {"type": "string", "enum": list(STATUSES)}},
    ),
]
Kinds = Annotated[
    list[str] | None,
    Query(
        description="Only tasks of one of these kinds (repeat for several)",
        json_schema_extra={"items": {"type": "string", "enum": list(TASK_KINDS)}},
    ),
]
CaseId = Annotated[str | None, Query(max_length=36, description="Only this case's tasks")]
Overdue = Annotated[
    bool | None, Query(description="true: only open tasks past their due date; false: only the others")
]
Limit = Annotated[int, Query(ge=1, le=200, description="Tasks per page")]
Cursor = Annotated[
    str | None, Query(max_length=200, description="`next_cursor` of the previous page, as given")
]


def _known(given: list[str] | None, known: tuple[str, ...], what: str) -> tuple[str, ...]:
    unknown = sorted(set(given or ()) - set(known))
    if unknown:
        raise InvalidPayload(f"unknown {what} {', '.join(unknown)}; the {what}s are {', '.join(known)}")
    return tuple(dict.fromkeys(given or ()))


@router.get(
    "/tasks",
    summary="The caller's office's tasks, soonest due first, in pages",
    description=(
        "The follow-up tasks the workers opened for the caller's office (request travel documents, "
        "pre-arrival notice, airport reception, reintegration counselling, monitoring visits), in the "
        "cases the office sees: soonest due first, undated last, then id. Pages are keyset pages: pass "
        "`next_cursor` back as `cursor` with the same filters until it is null. Items carry no personal "
        "data. A task is `open`, `done` (by the staff member in `completed_by`, or by the event that "
        "did its work: documents recorded, arrival confirmed, plan submitted, the next monitoring visit "
        "recorded; then `completed_by` is null) or `cancelled` (its journey was called off, or the case "
        "ended)."
    ),
    responses=responses("unauthenticated", "invalid_payload", "rate_limited"),
)
def list_tasks(
    caller: Caller,
    status: Statuses = None,
    kind: Kinds = None,
    case_id: CaseId = None,
    overdue: Overdue = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> TaskPage:
    statuses = _known(status, STATUSES, "status") or (OPEN,)
    filters = TaskFilter(statuses, _known(kind, TASK_KINDS, "kind"), case_id, overdue)
    app = caller.engine.app
    return SqlTasks(app.db).tasks(caller.actor, filters, cursor, limit, app.clock.now().date())


@router.post(
    "/tasks/{task_id}/complete",
    summary="Complete a task of the caller's office",
    description=(
        "Marks an open task done by the caller (a staff role of the task's office: caseworker, "
        "approver, travel or finance officer). Completing a done task again answers it as it is, so "
        "a retry is safe; a cancelled task answers 409 `task_closed`; another office's task, or one "
        "in a case the office no longer sees, answers 404 `unknown_task`."
    ),
    responses=responses(
        "unauthenticated", "unknown_task", "permission_denied", "task_closed", "rate_limited"
    ),
)
def complete_task(task_id: str, caller: Caller) -> Task:
    return caller.engine.app.tasks.complete(task_id, caller.actor)
