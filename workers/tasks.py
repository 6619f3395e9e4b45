"""Thin Celery tasks: parse the ids, call the service layer, retry what is transient."""

from __future__ import annotations

from datetime import datetime
from functools import cache
from typing import Any

import structlog
from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from celery.utils.time import get_exponential_backoff_interval
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError as DatabaseError

from config.celery import MAX_ATTEMPTS, RETRY_BACKOFF_MAX
from workers.app import app
from workflow.bootstrap import bootstrap, effect_runner
from workflow.service_layer.effects import EffectRunner, Event, Job
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


def _error(exc: BaseException) -> str:
    # The error's type and its own short text: channels never put addresses or bodies in it.
    return f"{type(exc).__name__}: {exc}"[:500]


def _give_up(job: Job, error: str, kind: str) -> None:
    _runner().give_up(job, error)
    log.error("job.dead_lettered", event_id=job.event_id, effect=job.effect, error=kind)


class EffectTask(Task):  # type: ignore[misc]
    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        """Retries are spent, or the error is not transient: the job goes to the dead letters."""
        _give_up(Job(*args), _error(exc), type(exc).__name__)


class JobsDeadLettered(Exception):
    """Raised by an event's task after it filed some of its jobs in the dead letters, so that the
    task counts as failed (Flower, avrr_task_failures_total); its other jobs are done."""


class EventTask(Task):  # type: ignore[misc]
    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        """The event's run failed outside its jobs (an error nobody expected): each of its
        unfinished jobs goes to the dead letters. Jobs already filed are not filed again."""
        if isinstance(exc, JobsDeadLettered):
            return
        for job in Event(*args).jobs():
            _give_up(job, _error(exc), type(exc).__name__)


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


# A job that ran out of the event's time (the soft limit covers all of an event's jobs) is not
# at fault: it goes with the retry, and its attempts in the database still bound it.
RETRYABLE = (*TRANSIENT, SoftTimeLimitExceeded)


@app.task(name="avrr.events.handle", base=EventTask, bind=True, max_retries=MAX_ATTEMPTS - 1)
def handle_event(
    self: Task, event_id: str, event_type: str, case_id: str, occurred_at: str | None = None
) -> str:
    """Every effect of one event, each its own job. A job with a permanent error is dead-lettered
    at once; transient errors retry the event (its done jobs are skipped), and the jobs still
    failing when the retries are spent are dead-lettered. A time limit ends the run: the job it
    cut short and the jobs after it go with the retry. An event that filed a job in the dead
    letters in this run ends as a failed task (JobsDeadLettered), once its other jobs are done.
    If the database refuses the filing itself, the event is retried rather than acknowledged
    with jobs neither done nor filed. A job filed by an earlier run (a permanent error, then a
    retry for another job) still makes the run that finishes the event a failed task."""
    structlog.contextvars.bind_contextvars(event_id=event_id, case_id=case_id)
    committed = datetime.fromisoformat(occurred_at) if occurred_at else None
    try:
        outcome = _runner().run_event(
            Event(event_id, event_type, case_id, committed), stop_on=(SoftTimeLimitExceeded,)
        )
    except TRANSIENT as exc:  # the runner itself could not start (its store, say)
        delay = backoff(self.request.retries)
        log.warning("event.retrying", error=type(exc).__name__, retry_in=round(delay, 2))
        raise self.retry(exc=exc, countdown=delay) from None
    retry = [(job, error) for job, error in outcome.failures if isinstance(error, RETRYABLE)]
    give_up = [(job, _error(error)) for job, error in outcome.failures if not isinstance(error, RETRYABLE)]
    spent = self.request.retries >= self.max_retries
    if spent:
        give_up += [(job, _error(failure)) for job, failure in retry]
        give_up += [(job, "not run: the event's retries ran out") for job in outcome.not_run]
    try:
        for job, error in give_up:
            _give_up(job, error, error.split(":", 1)[0])
    except TRANSIENT as exc:
        # Nothing is lost: the retry runs the unfinished jobs again and files what fails again,
        # however many retries that takes while the database is away.
        delay = backoff(min(self.request.retries, 6))
        log.warning("event.filing_failed", error=type(exc).__name__, retry_in=round(delay, 2))
        raise self.retry(countdown=delay, max_retries=self.request.retries + 1) from None
    dead = [job.effect for job in outcome.dead] + [job.effect for job, _ in give_up]
    if self.request.retries > 0:
        # A retry of the run that filed them: the event's outcome includes them. A copy of an
        # event's message (a redelivery, a resend) does not count a failure again.
        dead += [job.effect for job in outcome.dead_before]
    if spent or (not retry and not outcome.not_run):
        if dead:
            raise JobsDeadLettered(", ".join(dead))
        return "done"
    waits = [getattr(failure, "retry_after", None) for _, failure in retry]
    delay = max(backoff(self.request.retries, wait) for wait in waits) if waits else backoff(0)
    for job, failure in retry:
        log.warning("job.retrying", effect=job.effect, error=type(failure).__name__, retry_in=round(delay, 2))
    raise self.retry(countdown=delay)
