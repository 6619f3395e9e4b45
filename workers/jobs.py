"""Putting work on the queue: one message per event (its effects run in turn), several events in
one message when the relay found a backlog (see workers/relay.py), or one per (event, effect) for
a replayed dead letter. Ids, types and the commit's time only."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery import Celery
from kombu.utils.uuid import uuid

from workflow.service_layer.effects import Event, Job

EVENT_TASK = "avrr.events.handle"
EVENTS_TASK = "avrr.events.handle_many"
TASK = "avrr.effects.run"
# Publishing retries briefly; a broker that stays away raises, and the caller's transaction
# (the relay's batch, a replay) rolls back so nothing is marked sent or replayed.
PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5}
PERSISTENT = 2  # AMQP delivery mode, as Celery sends tasks (Redis keeps every message alike)


def send_event(
    app: Celery, event: Event, producer: Any = None, *, retries: int = 0, countdown: float | None = None
) -> None:
    """All of an event's jobs in one message: one publish, one delivery and one task run per
    event instead of per effect (bench/pipeline.py: most of a job's cost was Celery's own).
    ``retries`` and ``countdown``: the event sent on as a retry, as ``Task.retry`` would."""
    args = [event.event_id, event.event_type, event.case_id]
    # For the commit-to-effect latency; a retry sends the same kwargs again.
    kwargs = {"occurred_at": event.occurred_at.isoformat()} if event.occurred_at else {}
    _send(app, EVENT_TASK, args, kwargs, producer, retries=retries, countdown=countdown)


def event_args(event: Event) -> list[str | None]:
    """One event as the several-events message carries it."""
    occurred = event.occurred_at.isoformat() if event.occurred_at else None
    return [event.event_id, event.event_type, event.case_id, occurred]


def send_events(app: Celery, events: Sequence[Event], producer: Any = None) -> None:
    """Several events in one message, run in turn by one task: the relay packs a backlog so, and
    Celery's cost per message (its delivery, the late ack's bookkeeping, the task's run) is
    shared by the events. One event goes as ``send_event`` sends it."""
    if len(events) == 1:
        send_event(app, events[0], producer)
    elif events:
        _send(app, EVENTS_TASK, [event_args(e) for e in events], {}, producer)


def _send(
    app: Celery,
    name: str,
    args: Sequence[object],
    kwargs: dict[str, str],
    producer: Any,
    *,
    retries: int = 0,
    countdown: float | None = None,
) -> None:
    """Celery's task message (protocol 2, as ``send_task`` builds it) published on the given
    producer to the workers' queue. Not through ``send_task``: its routing and option handling
    took two thirds of a publish's CPU (150 -> 55 us per message in a batch); there is one queue
    and nothing to route."""
    args_repr, kwargs_repr = repr(args), repr(kwargs)  # ids and types only: no saferepr needed
    message = app.amqp.as_task_v2(
        uuid(),
        name,
        args,
        kwargs,
        countdown=countdown,
        retries=retries,
        argsrepr=args_repr,
        kwargsrepr=kwargs_repr,
    )
    queue = app.conf.task_default_queue
    with app.producer_or_acquire(producer) as publisher:
        publisher.publish(
            message.body,
            exchange="",  # the default exchange: the routing key names the queue
            routing_key=queue,
            headers=message.headers,
            serializer="json",
            delivery_mode=PERSISTENT,
            retry=True,
            retry_policy=PUBLISH_RETRY,
            **message.properties,
        )


def send_job(app: Celery, job: Job, producer: Any = None) -> None:
    args = [job.event_id, job.event_type, job.case_id, job.effect]
    kwargs = {"occurred_at": job.occurred_at.isoformat()} if job.occurred_at else {}
    _send(app, TASK, args, kwargs, producer)
