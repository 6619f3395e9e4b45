"""Completing a follow-up task: load it as the caller may see it, check, mark it done once."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Protocol

import structlog

from workflow.domain.actors import Actor
from workflow.domain.errors import TaskClosed, UnknownTask
from workflow.domain.tasks import DONE, Task, check_completion
from workflow.service_layer.ports import Clock

log = structlog.get_logger(__name__)


class TaskStore(Protocol):
    def get(self, task_id: str, actor: Actor) -> Task | None:
        """The task, if it is in a case the actor may see."""
        ...

    def complete(self, task_id: str, actor_id: str, now: datetime) -> bool:
        """Marks an open task done by the actor; False when it was no longer open."""
        ...


class TaskService:
    def __init__(self, store: TaskStore, clock: Clock) -> None:
        self._store, self._clock = store, clock

    def complete(self, task_id: str, actor: Actor) -> Task:
        """Done by this actor now; a task already done is returned as it is (a retry is safe).
        When a cancellation or another completion commits between the read and the write, the
        task as it then is decides: done is returned, cancelled refused."""
        found = self._store.get(task_id, actor)
        if not check_completion(found, task_id, actor):
            assert found is not None  # check_completion refuses a missing task
            return found
        now = self._clock.now()
        if self._store.complete(task_id, actor.id, now):
            assert found is not None
            log.info("task.completed", case_id=found.case_id, task_id=task_id, kind=found.kind)
            return replace(found, status=DONE, completed_at=now, completed_by=actor.id)
        changed = self._store.get(task_id, actor)  # someone else's write came first
        if changed is None:
            raise UnknownTask(task_id)
        if changed.status != DONE:
            raise TaskClosed(task_id, changed.status)
        return changed
