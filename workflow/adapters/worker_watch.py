"""The Celery workers online, asked over the broker's control channel (Celery's inspect).

One ping to everyone finds who is online (it waits ``timeout`` for late answers); the three
questions that follow go to exactly those workers and return as soon as each has answered.
Only ids and effect names travel back: a job's arguments are ids and types, never personal data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from celery import Celery

EFFECT_TASK = "avrr.effects.run"  # args: event_id, event_type, case_id, effect
EVENT_TASK = "avrr.events.handle"  # args: event_id, event_type, case_id (its effects in turn)
EVENTS_TASK = "avrr.events.handle_many"  # args: [event_id, event_type, case_id, occurred_at] each


@dataclass(frozen=True, slots=True)
class ActiveJob:
    task: str
    effect: str | None
    case_id: str | None
    event_id: str | None
    started_at: datetime | None
    worker_pid: int | None
    event_type: str | None = None


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    name: str
    queues: list[str]
    pool: str
    concurrency: int
    pids: list[int]
    active: list[ActiveJob] = field(default_factory=list)
    processed: dict[str, int] = field(default_factory=dict)  # tasks run since it started, by name


def _active_job(request: Mapping[str, Any]) -> ActiveJob:
    args: Sequence[Any] = request.get("args") or ()
    name = request.get("name")
    is_effect = name == EFFECT_TASK and len(args) >= 4
    is_event = is_effect or (name in (EVENT_TASK, EVENTS_TASK) and len(args) >= 3)
    started = request.get("time_start")
    return ActiveJob(
        task=str(name),
        effect=str(args[3]) if is_effect else None,
        case_id=str(args[2]) if is_event else None,
        event_id=str(args[0]) if is_event else None,
        started_at=datetime.fromtimestamp(started, UTC) if isinstance(started, int | float) else None,
        worker_pid=request.get("worker_pid"),
        event_type=str(args[1]) if is_event else None,
    )


def _active_jobs(request: Mapping[str, Any]) -> list[ActiveJob]:
    """A task's active jobs: one per event of a several-events message (the events it holds,
    run in turn), or the one ``_active_job`` reads."""
    if request.get("name") != EVENTS_TASK:
        return [_active_job(request)]
    events = [e for e in request.get("args") or () if isinstance(e, list | tuple) and len(e) >= 3]
    return [_active_job({**request, "args": list(e[:3])}) for e in events] or [_active_job(request)]


def _worker(name: str, stats: Mapping[str, Any], active: Sequence[Any], queues: Sequence[Any]) -> WorkerInfo:
    pool = stats.get("pool") or {}
    # "celery.concurrency.prefork:TaskPool" -> "prefork"
    implementation = str(pool.get("implementation", "")).split(":", 1)[0].rsplit(".", 1)[-1]
    return WorkerInfo(
        name=name,
        queues=sorted(str(q.get("name")) for q in queues),
        pool=implementation or "unknown",
        concurrency=int(pool.get("max-concurrency") or 0),
        pids=[int(p) for p in pool.get("processes") or ()],
        active=[job for request in active for job in _active_jobs(request)],
        processed={str(k): int(v) for k, v in (stats.get("total") or {}).items()},
    )


class WorkerWatch:
    """``timeout``: how long to wait for a late answer. A worker's event loop can take about half
    a second to pick up a control message, so less than a second misses busy workers."""

    def __init__(self, celery: Celery, timeout: float = 1.0) -> None:
        self._celery = celery
        self._timeout = timeout

    def workers(self) -> list[WorkerInfo]:
        """The workers that answer, by name; an empty list when none does. Raises the broker's
        error when the broker cannot be reached (the caller says so, rather than 'no workers')."""
        with self._celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0)  # fail fast
            names = sorted(
                {
                    name
                    for reply in self._celery.control.ping(timeout=self._timeout, connection=conn)
                    for name in reply
                }
            )
            if not names:
                return []
            inspect = self._celery.control.inspect(
                destination=names, limit=len(names), timeout=self._timeout, connection=conn
            )
            stats = inspect.stats() or {}
            active = inspect.active() or {}
            queues = inspect.active_queues() or {}
        return [_worker(n, stats.get(n) or {}, active.get(n) or [], queues.get(n) or []) for n in names]
