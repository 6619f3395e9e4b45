"""Thin Celery tasks: parse the ids, call the service layer, retry what is transient."""

from __future__ import annotations

from datetime import datetime
from functools import cache
from typing import Any

import structlog
from celery import Task
from celery.utils.time import get_exponential_backoff_interval
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError as DatabaseError

from config.celery import MAX_ATTEMPTS, RETRY_BACKOFF_MAX
from workers.app import app
from workflow.bootstrap import bootstrap, effect_runner
from workflow.service_layer.effects import EffectRunner, Job
from workflow.service_layer.notifications import TransientDeliveryError

log = structlog.get_logger(__name__)
TRANSIENT = (TransientDeliveryError, DatabaseError, BrokerError)


@cache
def _db() -> Engine:
    """Built lazily, so each forked worker process opens its own database pool."""
    return bootstrap().db


@cache
def _runner() -> EffectRunner:
    return effect_runner(_db(), MAX_ATTEMPTS)


class EffectTask(Task):  # type: ignore[misc]
    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        """Retries are spent, or the error is not transient: the job goes to the dead letters."""
        job = Job(*args)
        # The error's type and its own short text: channels never put addresses or bodies in it.
        error = f"{type(exc).__name__}: {exc}"[:500]
        _runner().give_up(job, error)
        log.error("job.dead_lettered", event_id=job.event_id, effect=job.effect, error=type(exc).__name__)


def backoff(retries: int, retry_after: float | None = None) -> float:
    """Exponential with full jitter (1 s, 2 s, 4 s ... up to the cap), or what the receiver asked."""
    if retry_after is not None:
        return min(retry_after, RETRY_BACKOFF_MAX)
    return float(get_exponential_backoff_interval(1, retries, RETRY_BACKOFF_MAX, full_jitter=True))


@app.task(name="avrr.effects.run", base=EffectTask, bind=True, max_retries=MAX_ATTEMPTS - 1)
def run_effect(
    self: Task, event_id: str, event_type: str, case_id: str, effect: str, occurred_at: str | None = None
) -> str:
    structlog.contextvars.bind_contextvars(event_id=event_id, case_id=case_id)
    committed = datetime.fromisoformat(occurred_at) if occurred_at else None
    try:
        return _runner().run(Job(event_id, event_type, case_id, effect, committed))
    except TRANSIENT as exc:
        delay = backoff(self.request.retries, getattr(exc, "retry_after", None))
        log.warning("job.retrying", effect=effect, error=type(exc).__name__, retry_in=round(delay, 2))
        raise self.retry(exc=exc, countdown=delay) from None
