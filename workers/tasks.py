"""Thin Celery tasks: parse the ids, call the service layer, let Celery retry what is transient."""

from __future__ import annotations

from functools import cache
from typing import Any

import structlog
from celery import Task
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError as DatabaseError

from config.celery import MAX_ATTEMPTS
from workers.app import app
from workflow.adapters.clock import SystemClock
from workflow.adapters.jobs import SqlJobStore
from workflow.bootstrap import bootstrap
from workflow.service_layer.effects import EffectRunner, Job

log = structlog.get_logger(__name__)


@cache
def _db() -> Engine:
    """Built lazily, so each forked worker process opens its own database pool."""
    return bootstrap().db


@cache
def _runner() -> EffectRunner:
    return EffectRunner(lambda: SqlJobStore(_db()), SystemClock(), MAX_ATTEMPTS)


class EffectTask(Task):  # type: ignore[misc]
    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        """Retries are spent (or the error is not transient): the job goes to the dead letters."""
        job = Job(*args)
        error = f"{type(exc).__name__}: {exc}"[:500]
        SqlJobStore(_db()).finish(job, "dead", error, SystemClock().now())
        log.error("job.dead_lettered", event_id=job.event_id, effect=job.effect, error=type(exc).__name__)


@app.task(
    name="avrr.effects.run",
    base=EffectTask,
    autoretry_for=(DatabaseError, BrokerError),
    retry_backoff=2,
    retry_backoff_max=300,
    retry_jitter=True,
    max_retries=6,
)
def run_effect(event_id: str, event_type: str, case_id: str, effect: str) -> str:
    structlog.contextvars.bind_contextvars(event_id=event_id, case_id=case_id)
    return _runner().run(Job(event_id, event_type, case_id, effect))
