"""What the ops dashboard reads and does: one overview per refresh, a case's timeline, replaying
a dead letter. Ops role only; every office's cases, as ids, states, offices, triggers, times,
effect names and errors: no names, contacts, payloads or reasons."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated

import structlog
from celery import Celery
from fastapi import APIRouter, Depends, Path, Request
from kombu.exceptions import OperationalError

from config.celery import celery_config
from workers.jobs import send_job
from workflow.adapters.jobs import DeadLetter, SqlDeadLetters
from workflow.adapters.ops_views import JobRun, OpsStatus, OpsViews, OverdueTimer, StuckCase, Timeline
from workflow.adapters.worker_watch import WorkerInfo, WorkerWatch
from workflow.api.context import Call, Caller, engine
from workflow.api.problems import ApiProblem, responses
from workflow.domain.actors import Role
from workflow.domain.errors import PermissionDenied

log = structlog.get_logger(__name__)
router = APIRouter(prefix="/ops", tags=["ops"])

READ = ("unauthenticated", "permission_denied", "rate_limited")
WORKERS_TTL = 2.0  # seconds: one broadcast per this long, however many dashboards poll
WORKERS_MAX_STALE = 10.0  # older than this, a request waits for a fresh answer instead ...
WORKERS_WAIT = 1.5  # ... this long at most: the page says "asking…" (or when it last asked) meanwhile
LIMIT = 100  # rows per list of the overview: a screen, not an export


def ops_call(caller: Caller) -> Call:
    """The caller, if it holds the ops role (ops see every office's cases, so no office scope)."""
    if Role.OPS not in caller.actor.roles:
        raise PermissionDenied("the ops role is required")
    return caller


OpsCaller = Annotated[Call, Depends(ops_call)]


# -- the workers, asked over the broker at most every WORKERS_TTL seconds ---------------------


@dataclass(frozen=True, slots=True)
class WorkersSeen:
    asked_at: datetime | None  # when the broker was asked; None before the first answer
    workers: list[WorkerInfo] = field(default_factory=list)
    error: str | None = None  # the broker could not be reached (its error class only)


class WorkerCache:
    """Serves the last answer and asks again in a thread of its own once it is WORKERS_TTL old:
    Celery's ping waits its whole timeout for late answers (1 s), which a dashboard refresh
    should not wait for, and several open dashboards should cost one broadcast, not several."""

    def __init__(self, ask: Callable[[], list[WorkerInfo]], now: Callable[[], datetime]) -> None:
        self._ask, self._now = ask, now
        self._lock = threading.Lock()
        self._seen = WorkersSeen(None)
        self._asked = float("-inf")  # time.monotonic() of the last answer
        self._refresh: threading.Thread | None = None

    def get(self) -> WorkersSeen:
        with self._lock:
            age = time.monotonic() - self._asked
            if age >= WORKERS_TTL and self._refresh is None:
                self._refresh = threading.Thread(target=self._update, name="ops-workers", daemon=True)
                self._refresh.start()
            refresh = self._refresh
        if refresh is not None and age >= WORKERS_MAX_STALE:
            # Over Redis an answer takes about 1 s; the embedded broker's files about 5 s.
            refresh.join(WORKERS_WAIT)
        return self._seen

    def _update(self) -> None:
        asked_at = self._now()
        try:
            seen = WorkersSeen(asked_at, self._ask())
        except Exception as exc:  # broker away: say so rather than "no worker online"
            log.warning("ops.workers_unreachable", error=type(exc).__name__)
            seen = WorkersSeen(asked_at, error=f"the broker did not answer: {type(exc).__name__}")
        with self._lock:
            self._seen, self._asked, self._refresh = seen, time.monotonic(), None


@dataclass
class Broker:
    """The API process's own Celery client, on the broker of the app's settings."""

    celery: Celery
    workers: WorkerCache

    @classmethod
    def on(cls, broker_url: str | None, now: Callable[[], datetime]) -> Broker:
        celery = Celery("avrr-ops")
        celery.conf.update(celery_config(broker_url))
        return cls(celery, WorkerCache(WorkerWatch(celery).workers, now))


_broker_lock = threading.Lock()


def broker(request: Request) -> Broker:
    """Made on first use, one per app: a process that never serves ops never connects."""
    state = request.app.state
    with _broker_lock:
        if getattr(state, "ops_broker", None) is None:
            eng = engine(request)
            state.ops_broker = Broker.on(eng.settings.broker_url, eng.app.clock.now)
    return state.ops_broker  # type: ignore[no-any-return]


BrokerDep = Annotated[Broker, Depends(broker)]


# -- the routes -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Overview:
    """Everything the dashboard shows but a case's timeline, in one answer."""

    status: OpsStatus
    workers: WorkersSeen
    dead_letters: list[DeadLetter]  # open ones, oldest first
    overdue_timers: list[OverdueTimer]
    stuck_cases: list[StuckCase]
    recent_jobs: list[JobRun]  # newest first


@dataclass(frozen=True, slots=True)
class Replayed:
    dead_letter_id: int
    event_id: str
    event_type: str
    case_id: str
    effect: str


@router.get(
    "/overview",
    summary="The ops dashboard's data: workers, outbox, dead letters, deadlines, stuck cases, jobs",
    description=(
        "One call per refresh. The workers online come from Celery's inspect over the broker, asked "
        f"at most every {WORKERS_TTL:.0f} s (`workers.asked_at`); `workers.error` says when the "
        f"broker did not answer. Lists hold at most {LIMIT} rows each. Every office's cases; ids, "
        "states, offices, times, effect names and errors only."
    ),
    responses=responses(*READ),
)
def overview(caller: OpsCaller, ops_broker: BrokerDep) -> Overview:
    app = caller.engine.app
    views, now = OpsViews(app.db), app.clock.now()
    return Overview(
        status=views.status(now),
        workers=ops_broker.workers.get(),
        dead_letters=views.dead_letters(LIMIT),
        overdue_timers=views.overdue_timers(now, LIMIT),
        stuck_cases=views.stuck_cases(now, LIMIT),
        recent_jobs=views.recent_jobs(LIMIT),
    )


@router.post(
    "/dead-letters/{dead_letter_id}/replay",
    status_code=202,
    summary="Replay a dead letter: its job goes back on the queue with a fresh attempt budget",
    description=(
        "For after the fault is fixed. The reopening and the publish share a transaction: when the "
        "broker refuses, nothing changes (503). An effect that had already happened is not repeated. "
        "A dead letter that is not open (unknown, or already replayed) answers 404. Written to the "
        "access log (who replayed which case's job)."
    ),
    responses=responses(*READ, "not_found", "broker_unavailable"),
)
def replay(
    dead_letter_id: Annotated[int, Path(ge=1, le=2**63 - 1)], caller: OpsCaller, ops_broker: BrokerDep
) -> Replayed:
    app, celery = caller.engine.app, ops_broker.celery
    try:
        with celery.producer_or_acquire() as producer:
            jobs = SqlDeadLetters(app.db).replay(
                [dead_letter_id], app.clock.now(), lambda job: send_job(celery, job, producer)
            )
    except OperationalError as exc:
        log.warning("ops.replay_unpublished", dead_letter_id=dead_letter_id, error=type(exc).__name__)
        detail = "the broker cannot be reached; the dead letter stays open"
        raise ApiProblem("broker_unavailable", detail) from exc
    if not jobs:
        raise ApiProblem("not_found", f"no open dead letter with id {dead_letter_id}")
    job = jobs[0]
    caller.log_access("replay_dead_letter", "ok", job.case_id)
    log.info("ops.dead_letter_replayed", id=dead_letter_id, case_id=job.case_id, effect=job.effect)
    return Replayed(dead_letter_id, job.event_id, job.event_type, job.case_id, job.effect)


@router.get(
    "/cases/{case_id}/timeline",
    summary="A case as ops see it: state, history, events, jobs, timers and tasks",
    description=(
        "Any office's case. History steps (trigger, states, actor id, time; no payload or reason), "
        "its outbox events (sent or waiting), the jobs of their effects with outcome and error, and "
        "its timers and the follow-up tasks its events opened (open, done by whom, or cancelled). No "
        "personal data, so reads are not written to the access log."
    ),
    responses=responses(*READ, "unknown_case"),
)
def timeline(case_id: Annotated[str, Path(max_length=64)], caller: OpsCaller) -> Timeline:
    return OpsViews(caller.engine.app.db).timeline(case_id)
