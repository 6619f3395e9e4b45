"""The tasks an office sees (lists in keyset pages) and their completion, scoped to the caller."""

from __future__ import annotations

import binascii
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import ColumnElement, Date, Engine, and_, false, func, literal, select, true, tuple_, update

from workflow.adapters import tables as tb
from workflow.adapters.db import writing
from workflow.adapters.queries import pack_cursor, plausible_id, unpack_cursor, visible_to
from workflow.domain.actors import Actor, Role
from workflow.domain.errors import InvalidPayload
from workflow.domain.tasks import DONE, OPEN, Task

t, c = tb.tasks.c, tb.cases.c
_COLUMNS = (
    t.id,
    t.case_id,
    t.kind,
    t.status,
    t.office,
    t.due_on,
    t.created_at,
    t.completed_at,
    t.completed_by,
)
# Tasks without a due date come after every dated one.
_NEVER = date(9999, 12, 31)
_DUE = func.coalesce(t.due_on, literal(_NEVER, Date))


@dataclass(frozen=True, slots=True)
class TaskFilter:
    statuses: tuple[str, ...] = (OPEN,)
    kinds: tuple[str, ...] = ()
    case_id: str | None = None
    overdue: bool | None = None  # True: open and past its due date; False: not so


@dataclass(frozen=True, slots=True)
class TaskPage:
    """Soonest due first (undated last), then id; ``next_cursor`` is null on the last page."""

    items: list[Task]
    next_cursor: str | None


def _office_of(actor: Actor) -> ColumnElement[bool]:
    """An office's staff see its tasks, in the cases the office sees; an office-less system
    actor sees all."""
    if actor.office is None:
        return true() if Role.SYSTEM in actor.roles else false()
    return and_(t.office == actor.office, visible_to(actor))


def encode_cursor(due: date, task_id: str) -> str:
    return pack_cursor([due.isoformat(), task_id])


def decode_cursor(cursor: str) -> tuple[date, str]:
    try:
        due, task_id = unpack_cursor(cursor)
        if not isinstance(due, str) or not isinstance(task_id, str) or not plausible_id(task_id):
            raise ValueError(cursor)
        return date.fromisoformat(due), task_id
    except (ValueError, TypeError, binascii.Error):
        raise InvalidPayload("the cursor is not one this API gave out") from None


class SqlTasks:
    """The read side of tasks for the API, and the ``TaskStore`` of the task service."""

    def __init__(self, db: Engine) -> None:
        self._db = db

    def _select(self, actor: Actor) -> Any:
        return select(*_COLUMNS).join(tb.cases, c.id == t.case_id).where(_office_of(actor))

    def tasks(self, actor: Actor, f: TaskFilter, cursor: str | None, limit: int, today: date) -> TaskPage:
        query = self._select(actor)
        if f.statuses:
            query = query.where(t.status.in_(f.statuses))
        if f.kinds:
            query = query.where(t.kind.in_(f.kinds))
        if f.case_id is not None:
            query = query.where(t.case_id == f.case_id if plausible_id(f.case_id) else t.id.is_(None))
        if f.overdue is not None:
            # An undated task is never late (and not NULL, which NOT would leave NULL, dropping it).
            late = and_(t.status == OPEN, t.due_on.is_not(None), t.due_on < today)
            query = query.where(late if f.overdue else ~late)
        if cursor:
            query = query.where(tuple_(_DUE, t.id) > tuple_(*decode_cursor(cursor)))
        with self._db.connect() as conn:
            rows = conn.execute(query.order_by(_DUE, t.id).limit(limit + 1)).all()
        page = [Task(*row) for row in rows[:limit]]
        last = page[-1] if len(rows) > limit else None
        return TaskPage(page, encode_cursor(last.due_on or _NEVER, last.id) if last else None)

    def get(self, task_id: str, actor: Actor) -> Task | None:
        if not plausible_id(task_id):
            return None
        with self._db.connect() as conn:
            row = conn.execute(self._select(actor).where(t.id == task_id)).first()
        return Task(*row) if row else None

    def complete(self, task_id: str, actor_id: str, now: datetime) -> bool:
        with writing(self._db) as conn:
            done = conn.execute(
                update(tb.tasks)
                .where(t.id == task_id, t.status == OPEN)
                .values(status=DONE, completed_at=now, completed_by=actor_id),
                execution_options={"preserve_rowcount": True},
            )
        return bool(done.rowcount)
