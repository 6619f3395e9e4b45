"""A retry Celery cannot publish sends the message itself back to the queue (workers.tasks._retry):
Celery's own Task.retry on a real app, with a broker that does not answer."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery, Task
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
