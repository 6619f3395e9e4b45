"""The task service against a hand-written store: who may complete a task, a retry, and a
cancellation or completion that commits between the read and the write."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime

import pytest

from tests.support import FixedClock
from workflow.domain.actors import Actor, Role
from workflow.domain.errors import PermissionDenied, TaskClosed, UnknownTask
from workflow.domain.tasks import Task
from workflow.service_layer.tasks import TaskService

CREATED = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
OPEN_TASK = Task("t1", "c1", "airport_reception", "open", "kyiv", date(2026, 12, 1), CREATED, None, None)
KYIV = Actor.of("kyiv-caseworker", "kyiv", Role.CASEWORKER)


class Store:
    """Tasks by id; ``interloper`` is what another request commits just before our write."""

    def __init__(self, task: Task | None, interloper: Task | None = None) -> None:
        self.task, self.interloper, self.writes = task, interloper, 0

    def get(self, task_id: str, actor: Actor) -> Task | None:
        return self.task if self.task and self.task.id == task_id else None

    def complete(self, task_id: str, actor_id: str, now: datetime) -> bool:
        if self.interloper is not None:
            self.task, self.interloper = self.interloper, None
        assert self.task is not None
        if self.task.status != "open":
            return False
        self.writes += 1
        self.task = replace(self.task, status="done", completed_at=now, completed_by=actor_id)
        return True


def test_staff_of_the_office_complete_an_open_task() -> None:
    store, clock = Store(OPEN_TASK), FixedClock()
    done = TaskService(store, clock).complete("t1", KYIV)
    assert (done.status, done.completed_by, done.completed_at) == ("done", KYIV.id, clock.now())
    assert store.writes == 1


def test_completing_a_done_task_again_writes_nothing_and_answers_it() -> None:
    first = Actor.of("kyiv-approver", "kyiv", Role.APPROVER)
    store = Store(replace(OPEN_TASK, status="done", completed_by=first.id, completed_at=CREATED))
    assert TaskService(store, FixedClock()).complete("t1", KYIV).completed_by == first.id
    assert store.writes == 0


@pytest.mark.parametrize(
    ("actor", "error"),
    [
        (Actor.of("tll-caseworker", "tallinn", Role.CASEWORKER), UnknownTask),
        (Actor.of("system:timers", None, Role.SYSTEM), PermissionDenied),  # sees every task
        (Actor.of("kyiv-ops", "kyiv", Role.OPS), PermissionDenied),
        (Actor.of("kyiv-automation", "kyiv", Role.SYSTEM), PermissionDenied),
    ],
)
def test_another_office_or_a_non_staff_role_is_refused(actor: Actor, error: type[Exception]) -> None:
    store = Store(OPEN_TASK)
    with pytest.raises(error):
        TaskService(store, FixedClock()).complete("t1", actor)
    assert store.task == OPEN_TASK


def test_a_cancelled_task_is_refused_with_its_status() -> None:
    with pytest.raises(TaskClosed) as refused:
        TaskService(Store(replace(OPEN_TASK, status="cancelled")), FixedClock()).complete("t1", KYIV)
    assert refused.value.extra() == {"task_status": "cancelled"}


def test_a_cancellation_that_commits_first_wins() -> None:
    store = Store(OPEN_TASK, interloper=replace(OPEN_TASK, status="cancelled", completed_at=CREATED))
    with pytest.raises(TaskClosed):
        TaskService(store, FixedClock()).complete("t1", KYIV)
    assert store.writes == 0


def test_a_colleague_who_completes_it_first_is_the_one_recorded() -> None:
    colleague = replace(OPEN_TASK, status="done", completed_by="kyiv-travel", completed_at=CREATED)
    store = Store(OPEN_TASK, interloper=colleague)
    assert TaskService(store, FixedClock()).complete("t1", KYIV) == colleague


def test_an_unknown_task_is_refused() -> None:
    with pytest.raises(UnknownTask):
        TaskService(Store(None), FixedClock()).complete("nope", KYIV)
