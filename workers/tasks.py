"""Thin Celery tasks: parse the ids, call the service layer, retry what is transient."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any, NoReturn

import structlog
from celery import Task, signals
from celery.exceptions import Reject, SoftTimeLimitExceeded, TimeLimitExceeded
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError as DatabaseError

from config.celery import MAX_ATTEMPTS, RETRY_BACKOFF_MAX
from config.settings import get_settings
from workers.app import app
from workers.jobs import send_event, send_events
from workflow.adapters import metrics
from workflow.adapters.jobs import EventLocks
from workflow.bootstrap import bootstrap, effect_runner
from workflow.service_layer.effects import EffectRunner, Event, Job
from workflow.service_layer.notifications import TransientDeliveryError

log = structlog.get_logger(__name__)
TRANSIENT = (TransientDeliveryError, DatabaseError, BrokerError)
# A job that ran out of the event's time (the soft limit covers all of an event's jobs, or a
# replayed job's own) is not at fault: it goes with the retry, and its attempts in the database
# still bound it.
RETRYABLE = (*TRANSIENT, SoftTimeLimitExceeded)


@cache
def _db() -> Engine:
    """Built lazily, so each forked worker process opens its own database pool."""
    return bootstrap().db


@cache
def _locks() -> EventLocks:
    return EventLocks(_db())


@cache
def _runner() -> EffectRunner:
    return effect_runner(_db(), MAX_ATTEMPTS)


_INHERITED: list[object] = []
REQUEUE_PAUSE = 5.0  # seconds at most, before a retry that could not be published is requeued


@signals.worker_process_init.connect
def _own_connections(**_: Any) -> None:
    """A pool process opens its own connections. Should the worker's main process have built
    these before forking it, the copies share the parent's sockets: they are kept (neither used
    nor closed, nor collected, which could close them) and the process builds its own."""
    for built in (_runner, _locks, _db):
        if built.cache_info().currsize:
            _INHERITED.append(built())
            built.cache_clear()


@signals.task_prerun.connect
def _fresh_log_context(task_id: str | None = None, **_: Any) -> None:
    """Each task's log lines carry its own ids only: what the last task in this pool process bound
    (its event and case) is dropped, and the task's id is the request id its lines share."""
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=task_id)


def _error(exc: BaseException) -> str:
    # The error's type and its own short text: channels never put addresses or bodies in it.
    return f"{type(exc).__name__}: {exc}"[:500]


def _give_up(job: Job, error: str, kind: str) -> None:
    _runner().give_up(job, error)
    log.error("job.dead_lettered", event_id=job.event_id, effect=job.effect, error=kind)


def _killed_by_hard_limit(exc: Exception) -> bool:
    """Celery calls ``on_failure`` in the worker's main process when the hard time limit kills
    a task: nothing is filed from there (no database work in the process that forks the pool).
    The message goes back to the queue (task_acks_on_timeout off), its done jobs are skipped and
    the job that hung counts an attempt (from its redelivery on, for a task or settling job whose
    first delivery hung: EffectRunner.run_event); the attempt cap files one that hangs every time."""
    if not isinstance(exc, TimeLimitExceeded):
        return False
    log.error("task.hard_time_limit", requeued=True)
    return True


class EffectTask(Task):  # type: ignore[misc]
    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        """Retries are spent, or the error is not transient: the job goes to the dead letters."""
        if _killed_by_hard_limit(exc):
            return
        _give_up(Job(*args), _error(exc), type(exc).__name__)


class JobsDeadLettered(Exception):
    """Raised by an event's task after it filed some of its jobs in the dead letters, so that the
    task counts as failed (Flower, avrr_task_failures_total); its other jobs are done."""


class EventTask(Task):  # type: ignore[misc]
    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        """The event's run failed outside its jobs (an error nobody expected): each of its
        unfinished jobs goes to the dead letters. Jobs already filed are not filed again."""
        if isinstance(exc, JobsDeadLettered) or _killed_by_hard_limit(exc):
            return
        _count(retry=False, dead=True)
        for job in Event(*args).jobs():
            _give_up(job, _error(exc), type(exc).__name__)


def _retry(task: Task, **options: Any) -> NoReturn:
    """``Task.retry``, except when the retry cannot be published (the broker away): Celery would
    reject the message without requeueing it, leaving its jobs to the search for lost messages;
    here the message itself goes back to the queue, and its done jobs are skipped when it runs."""
    try:
        raise task.retry(**options)
    except Reject as refused:
        if refused.requeue:
            raise
        log.warning("task.retry_not_sent", error=type(refused.reason).__name__)
        # The requeued message comes back at once, without the retry's countdown: a short
        # pause stands in for it, so a broker that fails for a moment does not spend the
        # job's attempts (jobs.attempts) within seconds. If the broker is wholly away, the
        # requeue fails too and Redis hands the message out again after its visibility timeout.
        time.sleep(min(float(options.get("countdown") or 0.0), REQUEUE_PAUSE))
        raise Reject(refused.reason, requeue=True) from None


def backoff(retries: int, retry_after: float | None = None, base: float | None = None) -> float:
    """What the receiver asked, or exponential with equal jitter: the n-th retry waits between half
    and all of ``base * 2**n`` seconds (AVRR_RETRY_BASE_SECONDS, 15: 7.5-15 s, 15-30 s, 30-60 s,
    60-120 s, the cap). The MAX_ATTEMPTS - 1 retries of a job so span 1.9 to 3.75 minutes, enough
    for an SMTP relay, an SMS gateway or the other deployment to restart; full jitter (0 to the
    window) could spend them all within seconds. Jitter spreads the retries of the jobs an outage
    failed together."""
    if retry_after is not None:
        return min(retry_after, RETRY_BACKOFF_MAX)
    window = float(min(RETRY_BACKOFF_MAX, (base or get_settings().retry_base_seconds) * 2**retries))
    return window / 2 + random.uniform(0, window / 2)


@app.task(name="avrr.effects.run", base=EffectTask, bind=True, max_retries=MAX_ATTEMPTS - 1)
def run_effect(
    self: Task, event_id: str, event_type: str, case_id: str, effect: str, occurred_at: str | None = None
) -> str:
    structlog.contextvars.bind_contextvars(event_id=event_id, case_id=case_id)
    committed = datetime.fromisoformat(occurred_at) if occurred_at else None
    # A replayed job's event may be running in another process now (a late copy of its
    # message, whose run would start the reopened job too): this run waits its turn.
    with _locks().running_alone([event_id]) as mine:
        if not mine:
            delay = backoff(self.request.retries)
            log.info("job.event_running_elsewhere", effect=effect, retry_in=round(delay, 2))
            _retry(self, countdown=delay)
        try:
            return _runner().run(Job(event_id, event_type, case_id, effect, committed))
        except RETRYABLE as exc:
            delay = backoff(self.request.retries, getattr(exc, "retry_after", None))
            log.warning("job.retrying", effect=effect, error=type(exc).__name__, retry_in=round(delay, 2))
            _retry(self, exc=exc, countdown=delay)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one run of an event leaves: done, done with jobs filed in the dead letters
    (``dead``), or a retry in ``retry_in`` seconds (for ``exc`` when the run could not start;
    ``max_retries`` set when the filing itself failed: one more retry, whatever the count)."""

    dead: tuple[str, ...] = ()
    retry_in: float | None = None
    exc: Exception | None = None
    max_retries: int | None = None
    out_of_time: bool = False  # the soft time limit cut the run short


# Brokers whose transport marks a message it puts back (kombu's redis transport, sentinel
# included, sets delivery_info["redelivered"] on every restore: a lost worker, a requeue).
MARKS_REDELIVERY = ("redis", "rediss", "sentinel")


@cache
def _marks_redelivery(broker_url: str) -> bool:
    return broker_url.split("://", 1)[0].split("+", 1)[0] in MARKS_REDELIVERY


def first_delivery(task: Task) -> bool:
    """The message is on its first delivery: not a retry, not put back after a lost worker or a
    requeue. Only where the broker marks what it puts back; elsewhere no delivery counts as a
    first one (EffectRunner.run_event: a first delivery counts no attempt before its task)."""
    request = task.request
    redelivered = (request.delivery_info or {}).get("redelivered", True)
    return not request.retries and not redelivered and _marks_redelivery(str(task.app.conf.broker_url))


def run_event(event: Event, retries: int, max_retries: int, first: bool = False) -> Verdict:
    """``_run_event``, counted in avrr_events_run_total."""
    verdict = _run_event(event, retries, max_retries, first)
    _count(verdict.retry_in is not None, bool(verdict.dead))
    return verdict


def _count(retry: bool, dead: bool) -> None:
    metrics.EVENTS_RUN.labels("retry" if retry else "dead" if dead else "done").inc()


def _run_event(event: Event, retries: int, max_retries: int, first: bool = False) -> Verdict:
    """Every effect of one event, each its own job. A job with a permanent error is dead-lettered
    at once; transient errors retry the event (its done jobs are skipped), and the jobs still
    failing when the retries are spent are dead-lettered. A time limit ends the run: the job it
    cut short and the jobs after it go with the retry. If the database refuses the filing
    itself, the event is retried rather than acknowledged with jobs neither done nor filed. A
    job filed by an earlier run (a permanent error, then a retry for another job) is in the
    ``dead`` of the run that finishes the event, after a retry."""
    try:
        outcome = _runner().run_event(event, stop_on=(SoftTimeLimitExceeded,), first_delivery=first)
    except TRANSIENT as exc:  # the runner itself could not start (its store, say)
        delay = backoff(retries)
        log.warning("event.retrying", error=type(exc).__name__, retry_in=round(delay, 2))
        return Verdict(retry_in=delay, exc=exc)
    retry = [(job, error) for job, error in outcome.failures if isinstance(error, RETRYABLE)]
    give_up = [(job, _error(error)) for job, error in outcome.failures if not isinstance(error, RETRYABLE)]
    out_of_time = any(isinstance(error, SoftTimeLimitExceeded) for _, error in outcome.failures)
    spent = retries >= max_retries
    if spent:
        give_up += [(job, _error(failure)) for job, failure in retry]
        give_up += [(job, "not run: the event's retries ran out") for job in outcome.not_run]
    try:
        for job, error in give_up:
            _give_up(job, error, error.split(":", 1)[0])
    except TRANSIENT as exc:
        # Nothing is lost: the retry runs the unfinished jobs again and files what fails again,
        # however many retries that takes while the database is away.
        delay = backoff(min(retries, 6))
        log.warning("event.filing_failed", error=type(exc).__name__, retry_in=round(delay, 2))
        return Verdict(retry_in=delay, max_retries=retries + 1, out_of_time=out_of_time)
    dead = [job.effect for job in outcome.dead] + [job.effect for job, _ in give_up]
    if retries > 0:
        # A retry of the run that filed them: the event's outcome includes them. A copy of an
        # event's message (a redelivery, a resend) does not count a failure again.
        dead += [job.effect for job in outcome.dead_before]
    if spent or (not retry and not outcome.not_run):
        return Verdict(dead=tuple(dead))
    waits = [getattr(failure, "retry_after", None) for _, failure in retry]
    delay = max(backoff(retries, wait) for wait in waits) if waits else backoff(0)
    for job, failure in retry:
        log.warning("job.retrying", effect=job.effect, error=type(failure).__name__, retry_in=round(delay, 2))
    # Jobs filed in this run are reported by the retry that finishes the event (dead_before).
    return Verdict(retry_in=delay, out_of_time=out_of_time)


@app.task(name="avrr.events.handle", base=EventTask, bind=True, max_retries=MAX_ATTEMPTS - 1)
def handle_event(
    self: Task, event_id: str, event_type: str, case_id: str, occurred_at: str | None = None
) -> str:
    """One event's message (``run_event``): a retry is Celery's, with the event's backoff. An
    event that filed a job in the dead letters ends as a failed task (JobsDeadLettered), once
    its other jobs are done."""
    structlog.contextvars.bind_contextvars(event_id=event_id, case_id=case_id)
    committed = datetime.fromisoformat(occurred_at) if occurred_at else None
    event = Event(event_id, event_type, case_id, committed)
    with _locks().running_alone([event_id]) as mine:
        if not mine:  # a copy of this message runs it now (EventLocks)
            log.info("event.running_elsewhere")
            return "running elsewhere"
        verdict = run_event(event, self.request.retries, self.max_retries, first_delivery(self))
    if verdict.retry_in is not None:
        _retry(self, exc=verdict.exc, countdown=verdict.retry_in, max_retries=verdict.max_retries)
    if verdict.dead:
        raise JobsDeadLettered(", ".join(verdict.dead))
    return "done"


class EventsTask(Task):  # type: ignore[misc]
    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        """The message's run failed outside its events' runs (sending an event on, say): each
        unfinished job of its events goes to the dead letters (done jobs stay done)."""
        if isinstance(exc, JobsDeadLettered) or _killed_by_hard_limit(exc):
            return
        for event_id, event_type, case_id, *_ in args:
            for job in Event(event_id, event_type, case_id).jobs():
                _give_up(job, _error(exc), type(exc).__name__)


@app.task(name="avrr.events.handle_many", base=EventsTask, bind=True, max_retries=MAX_ATTEMPTS - 1)
def handle_events(self: Task, *events: list[str | None]) -> str:
    """Several events of a backlog in one message (workers/relay.py packs them), each run in
    turn as ``handle_event`` runs one. The message itself is not retried: an event that needs a
    retry goes on in its own message, as its next retry, with its backoff (so a later event of
    its case in this message may take effect first, as with any retry); when the soft time limit
    cuts the run short, the event it cut goes on as a retry and the events not yet run go on
    together in one message, in their order. An error nobody expected in one event's run files
    that event's unfinished jobs and the others still run; should that filing fail, the event
    goes on as a retry. Should sending events on fail (the broker away), the whole message goes
    back to the queue (its done jobs are skipped when it runs again). Ends as a failed task
    (JobsDeadLettered) when an event filed a job in the dead letters and is not being retried."""
    retries = self.request.retries
    todo = [
        Event(str(i), str(t), str(c), datetime.fromisoformat(at) if at else None) for i, t, c, at in events
    ]
    with _locks().running_alone([event.event_id for event in todo]) as mine:
        if len(mine) < len(todo):  # a copy of this message runs them now (EventLocks)
            log.info("events.running_elsewhere", events=len(todo) - len(mine))
        retrying, rest, dead = _run_events(
            [e for e in todo if e.event_id in mine], retries, self.max_retries, first_delivery(self)
        )
    structlog.contextvars.unbind_contextvars("event_id", "case_id")
    dead += _send_on(self, retrying, rest)
    if dead:
        raise JobsDeadLettered(", ".join(dead))
    return "done"


Retrying = list[tuple[Event, float, int | None]]  # (event, countdown, max_retries)


def _run_events(
    todo: list[Event], retries: int, max_retries: int, first: bool = False
) -> tuple[Retrying, list[Event], list[str]]:
    """``handle_events``' turn through its events: those to retry, those not reached (the soft
    time limit ended the message first), and the dead jobs' descriptions."""
    retrying: Retrying = []
    rest: list[Event] = []  # not run: the soft time limit ended the message first
    dead: list[str] = []
    for index, event in enumerate(todo):
        try:
            structlog.contextvars.bind_contextvars(event_id=event.event_id, case_id=event.case_id)
            try:
                verdict = run_event(event, retries, max_retries, first)
            except SoftTimeLimitExceeded:
                raise
            except Exception as exc:  # outside the event's jobs: as handle_event's on_failure
                try:
                    for job in event.jobs():
                        _give_up(job, _error(exc), type(exc).__name__)
                except TRANSIENT:  # the filing failed too: the retry runs it again
                    retrying.append((event, backoff(min(retries, 6)), retries + 1))
                    _count(retry=True, dead=False)
                else:
                    dead.append(f"{event.event_id}: {type(exc).__name__}")
                    _count(retry=False, dead=True)
                continue
        except SoftTimeLimitExceeded:  # anywhere in this event's turn: it retries, the rest go on
            retrying.append((event, backoff(retries), None))
            _count(retry=True, dead=False)
            rest = todo[index + 1 :]
            break
        dead += verdict.dead
        if verdict.retry_in is not None:
            retrying.append((event, verdict.retry_in, verdict.max_retries))
        if verdict.out_of_time:
            rest = todo[index + 1 :]
            break
    return retrying, rest, dead


def _send_on(task: Task, retrying: Retrying, rest: list[Event]) -> list[str]:
    """Sends the retries of a several-events message, each on its own, and the events it did not
    reach, together. A retry whose event has used every retry is not sent: its jobs are filed,
    and the events so filed are returned."""
    filed: list[str] = []
    if not retrying and not rest:
        return filed
    retries = task.request.retries
    going: list[tuple[Event, float]] = []
    for event, countdown, limit in retrying:
        if retries + 1 <= (task.max_retries if limit is None else limit):
            going.append((event, countdown))
            continue
        for job in event.jobs():  # as Task.retry would fail the task: its unfinished jobs are filed
            _give_up(job, "the event's retries ran out", "MaxRetriesExceededError")
        filed.append(f"{event.event_id}: retries ran out")
    try:
        with task.app.producer_or_acquire() as producer:
            for event, countdown in going:
                send_event(task.app, event, producer, retries=retries + 1, countdown=countdown)
            send_events(task.app, rest, producer)
    except Exception as exc:  # the broker is away (or time ran out): the whole message, again
        log.warning("events.send_on_failed", error=type(exc).__name__, events=len(going) + len(rest))
        raise Reject(exc, requeue=True) from None
    log.warning("events.sent_on", retried=len(going), not_reached=len(rest))
    if going:
        metrics.TASK_RETRIES.labels(task.name).inc(len(going))
    return filed
