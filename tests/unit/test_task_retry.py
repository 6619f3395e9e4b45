"""workers.tasks around Celery: a retry Celery cannot publish sends the message itself back to the
queue (_retry: Celery's own Task.retry on a real app, with a broker that does not answer), and each
task logs with its own ids (a task_prerun handler)."""

from __future__ import annotations

from typing import Any

import pytest
import structlog
from celery import Celery, Task, signals
from celery.exceptions import Reject, Retry

from workers.tasks import _retry


def _task(broker: str, max_retries: int = 3) -> Task:
    app = Celery("avrr-retry-test", broker=broker)
    app.conf.broker_connection_retry = False
    app.conf.broker_transport_options = {"socket_connect_timeout": 0.5}

    @app.task(bind=True, max_retries=max_retries)
    def flaky(self: Task) -> None:
        _retry(self, exc=RuntimeError("transient"), countdown=1, retry_policy={"max_retries": 0})

    task: Task = flaky  # type: ignore[assignment]
    # As in a worker: a message's request (not called directly).
    task.push_request(id="task-1", retries=0, called_directly=False, delivery_info={})
    return task


def _run(task: Task) -> Any:
    try:
        return task.run()
    finally:
        task.pop_request()


def test_a_retry_the_broker_refuses_requeues_the_message_instead_of_dropping_it() -> None:
    with pytest.raises(Reject) as refused:
        _run(_task("redis://127.0.0.1:1/0"))  # nothing listens on port 1
    assert refused.value.requeue is True


def test_a_retry_that_could_be_published_is_celerys_own() -> None:
    with pytest.raises(Retry):
        _run(_task("memory://"))


def test_spent_retries_raise_the_error_as_celery_does() -> None:
    with pytest.raises(RuntimeError, match="transient"):
        _run(_task("memory://", max_retries=0))


def test_each_task_logs_with_its_own_ids_not_the_last_tasks() -> None:
    """A pool process ran an event of case A; beat's timer task comes next: its lines carry its
    own task id as request id, and neither A's event id nor its case id."""
    structlog.contextvars.bind_contextvars(event_id="event-of-a", case_id="case-a", request_id="cli-1")
    try:
        signals.task_prerun.send(sender=None, task_id="task-2", task=None, args=(), kwargs={})
        assert structlog.contextvars.get_contextvars() == {"request_id": "task-2"}
    finally:
        structlog.contextvars.clear_contextvars()
