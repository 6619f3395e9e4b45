"""workers.tasks around Celery: a retry Celery cannot publish sends the message itself back to the
queue (_retry: Celery's own Task.retry on a real app, with a broker that does not answer), and each
task logs with its own ids (a task_prerun handler)."""

from __future__ import annotations

from typing import Any

import pytest
import structlog
from celery import Celery, Task, signals
from celery.exceptions import Reject, Retry

from workers.tasks import _retry, first_delivery


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


@pytest.mark.parametrize(
    ("broker", "retries", "delivery_info", "first"),
    [
        ("redis://127.0.0.1:6379/0", 0, {"redelivered": False}, True),
        ("rediss://cache.example.org:6380/0", 0, {"redelivered": False}, True),
        ("sentinel://127.0.0.1:26379", 0, {"redelivered": False}, True),
        ("redis+socket:///run/redis.sock", 0, {"redelivered": False}, True),
        ("redis://127.0.0.1:6379/0", 0, {"redelivered": True}, False),  # put back after a lost worker
        ("redis://127.0.0.1:6379/0", 1, {"redelivered": False}, False),  # a retry
        ("redis://127.0.0.1:6379/0", 0, {}, False),  # not said: not taken as a first delivery
        ("redis://127.0.0.1:6379/0", 0, None, False),
        ("filesystem://", 0, {"redelivered": False}, False),  # brokers that do not mark what they put back
        ("sqla+sqlite:///var/avrr.db", 0, {"redelivered": False}, False),
        ("amqp://guest@127.0.0.1//", 0, {"redelivered": False}, False),
        ("memory://", 0, {"redelivered": False}, False),
    ],
)
def test_a_first_delivery_is_one_the_broker_would_have_marked_had_it_put_it_back(
    broker: str, retries: int, delivery_info: dict[str, bool] | None, first: bool
) -> None:
    """The one-step task and settling jobs (EffectRunner.run_event) rely on the broker marking
    every message it puts back: only Redis's transport (kombu) does, so elsewhere nothing is a
    first delivery."""
    app = Celery("avrr-first-delivery-test", broker=broker)

    @app.task(bind=True)
    def handle(self: Task) -> bool:
        return first_delivery(self)

    task: Task = handle  # type: ignore[assignment]
    task.push_request(id="task-1", retries=retries, called_directly=False, delivery_info=delivery_info)
    try:
        assert task.run() is first
    finally:
        task.pop_request()
