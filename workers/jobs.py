"""Putting work on the queue: one message per event (its effects run in turn), or one per
(event, effect) for a replayed dead letter. Ids, types and the commit's time only."""

from __future__ import annotations

from typing import Any

from celery import Celery

from workflow.service_layer.effects import Event, Job

EVENT_TASK = "avrr.events.handle"
TASK = "avrr.effects.run"
# Publishing retries briefly; a broker that stays away raises, and the caller's transaction
# (the relay's batch, a replay) rolls back so nothing is marked sent or replayed.
PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5}


def send_event(app: Celery, event: Event, producer: Any = None) -> None:
    """All of an event's jobs in one message: one publish, one delivery and one task run per
    event instead of per effect (bench/pipeline.py: most of a job's cost was Celery's own)."""
    args = [event.event_id, event.event_type, event.case_id]
    # For the commit-to-effect latency; a retry sends the same kwargs again.
    kwargs = {"occurred_at": event.occurred_at.isoformat()} if event.occurred_at else {}
    _send(app, EVENT_TASK, args, kwargs, producer)


def _send(app: Celery, name: str, args: list[str], kwargs: dict[str, str], producer: Any) -> None:
    app.send_task(
        name,
        args=args,
        kwargs=kwargs,
        producer=producer,
        retry=True,
        retry_policy=PUBLISH_RETRY,
        # Ids and types only: their plain repr, not Celery's saferepr (a fifth of a publish's CPU).
        argsrepr=repr(args),
        kwargsrepr=repr(kwargs),
    )


def send_job(app: Celery, job: Job, producer: Any = None) -> None:
    args = [job.event_id, job.event_type, job.case_id, job.effect]
    kwargs = {"occurred_at": job.occurred_at.isoformat()} if job.occurred_at else {}
    _send(app, TASK, args, kwargs, producer)
