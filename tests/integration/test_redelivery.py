"""Events whose message was lost after the relay sent it: the relay publishes them again, and
each effect still happens once. On SQLite and PostgreSQL for the search; with a real Redis that
loses what it held and a real worker for the whole story."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from celery import Celery
from sqlalchemy import insert, select

from config.celery import celery_config
from tests.integration.processes import RedisServer, start_worker, stop, wait_for
from tests.servers import smtp_server
from tests.support import advance_to, jobs_of
from workers import relay
from workflow.adapters import tables as tb
from workflow.adapters.relay import OutboxMessage, OutboxRelay
from workflow.bootstrap import App
from workflow.service_layer.effects import runnable_effects

o = tb.outbox.c


def _relay(app: App, published: list[str]) -> OutboxRelay:
    def publish(batch: Sequence[OutboxMessage]) -> None:  # as celery_publisher: events with jobs
        published.extend(m.event_id for m in batch if runnable_effects(m.event_type))

    return OutboxRelay(app.db, publish, jobs_per_type=relay.jobs_per_type())


def _with_effects(app: App, case_id: str) -> list[str]:
    """The case's events that have jobs, in commit order."""
    return list(dict.fromkeys(job.event_id for job in jobs_of(app, case_id)))


def _attempts(app: App, case_id: str) -> dict[str, int]:
    with app.db.connect() as conn:
        rows = conn.execute(select(o.event_id, o.attempts).where(o.case_id == case_id))
        return {event_id: attempts for event_id, attempts in rows}


def test_sent_events_whose_jobs_never_finished_go_again_and_settled_ones_do_not(app: App) -> None:
    case_id = advance_to(app, "return_approved")
    published: list[str] = []
    outbox = _relay(app, published)
    assert outbox.relay_once() > 0
    events = _with_effects(app, case_id)
    assert published == events  # each event with effects once (the others carry no message)

    # Sent just now: still in flight as far as anyone can tell.
    published.clear()
    assert outbox.redeliver_stalled(after=timedelta(minutes=15)) == 0

    # The first event's jobs are finished (one done, any others dead-lettered): it is settled.
    first = [job for job in jobs_of(app, case_id) if job.event_id == events[0]]
    now = datetime.now(UTC)
    with app.db.begin() as conn:
        for index, job in enumerate(first):
            conn.execute(
                insert(tb.jobs),
                {
                    "event_id": job.event_id,
                    "effect": job.effect,
                    "case_id": case_id,
                    "event_type": job.event_type,
                    "status": "done" if index == 0 else "dead",
                    "attempts": 1,
                    "started_at": now - timedelta(hours=1),
                    "finished_at": now - timedelta(hours=1),
                },
            )
    assert outbox.redeliver_stalled(after=timedelta(0)) == len(events) - 1
    assert published == events[1:]
    attempts = _attempts(app, case_id)
    assert [attempts[e] for e in events] == [1] + [2] * (len(events) - 1)

    # Stamped sent again: each goes at most once per period.
    published.clear()
    assert outbox.redeliver_stalled(after=timedelta(minutes=1)) == 0
    assert published == []


def test_an_event_whose_job_started_lately_is_left_to_its_retries(app: App) -> None:
    case_id = advance_to(app, "application_submitted")
    published: list[str] = []
    outbox = _relay(app, published)
    outbox.relay_once()
    job = jobs_of(app, case_id)[-1]
    with app.db.begin() as conn:
        conn.execute(
            insert(tb.jobs),
            {
                "event_id": job.event_id,
                "effect": job.effect,
                "case_id": case_id,
                "event_type": job.event_type,
                "status": "running",  # between attempts: its retry waits in the broker
                "attempts": 2,
                "started_at": datetime.now(UTC),
            },
        )
    published.clear()
    assert outbox.redeliver_stalled(after=timedelta(seconds=30)) == 0  # not sent 30 s ago yet
    assert job.event_id not in published
    outbox.redeliver_stalled(after=timedelta(0))  # cutoff now: the job started before it
    assert job.event_id in published


@pytest.mark.postgres
def test_messages_a_broker_lost_are_published_again_and_each_effect_happens_once(
    pg_app: App, pg_url: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    """The relay hands the events to Redis while no worker runs; Redis then loses them (FLUSHDB,
    as a crash without the last AOF write would). The relay's sweep finds them unsettled and
    publishes them again; the worker, started late, runs each job once."""
    broker = redis_server.url()
    celery = Celery("avrr-test")
    celery.conf.update(celery_config(broker))
    halt = threading.Event()
    loop = threading.Thread(
        target=relay.run,
        args=(pg_app.db, celery, halt, 0.2),
        kwargs={"heartbeat": None, "redeliver_after": timedelta(seconds=2), "sweep_every": 0.5},
        daemon=True,
    )
    loop.start()
    try:
        case_id = advance_to(pg_app, "return_approved")
        events = _with_effects(pg_app, case_id)
        wait_for(lambda: all(n >= 1 for n in _attempts(pg_app, case_id).values()), 10, "the events sent")
        redis_server.client().flushdb()  # every message is gone
        with smtp_server() as (smtp, inbox):
            env = {"AVRR_SMTP_PORT": str(smtp.port), "AVRR_SMS_SINK": str(tmp_path / "sms.jsonl")}
            worker = start_worker(pg_url, broker, tmp_path / "worker.log", 2, env)
            try:
                jobs = jobs_of(pg_app, case_id)
                wait_for(lambda: _finished(pg_app, case_id) == len(jobs), 60, "every job done")
                attempts = _attempts(pg_app, case_id)
                assert all(attempts[e] >= 2 for e in events)  # each went again
                assert _job_attempts(pg_app, case_id) == [1] * len(jobs)  # each ran once
                with pg_app.db.connect() as conn:
                    tasks = conn.scalars(select(tb.tasks.c.kind).where(tb.tasks.c.case_id == case_id)).all()
                assert sorted(tasks) == sorted(set(tasks))  # no task twice
                sent = len(inbox.received())
            finally:
                stop(worker, 30)
    finally:
        halt.set()
        loop.join(10)
    assert sent > 0


def _finished(app: App, case_id: str) -> int:
    j = tb.jobs.c
    with app.db.connect() as conn:
        return len(conn.scalars(select(j.effect).where(j.case_id == case_id, j.status == "done")).all())


def _job_attempts(app: App, case_id: str) -> list[int]:
    j = tb.jobs.c
    with app.db.connect() as conn:
        return list(conn.scalars(select(j.attempts).where(j.case_id == case_id)))
