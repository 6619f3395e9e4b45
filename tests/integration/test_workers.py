"""Real Celery worker processes on Redis, the relay on PostgreSQL: each effect happens once."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery
from sqlalchemy import func, select

from config.celery import celery_config
from tests.integration.processes import RedisServer, start_worker, stop, wait_for
from tests.servers import smtp_server
from tests.support import advance_to
from workers import relay
from workflow.adapters import tables as tb
from workflow.adapters.clock import SystemClock
from workflow.adapters.jobs import SqlJobStore
from workflow.bootstrap import App
from workflow.domain.effects import CREATE_TASK
from workflow.domain.lifecycle import LIFECYCLE
from workflow.service_layer.effects import EffectRunner, Job, runnable_effects

pytestmark = pytest.mark.postgres


@pytest.fixture
def broker(redis_server: RedisServer) -> str:
    return redis_server.url()


@pytest.fixture
def worker(pg_url: str, broker: str, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    with smtp_server() as (smtp, _):
        notices = {"AVRR_SMTP_PORT": str(smtp.port), "AVRR_SMS_SINK": str(tmp_path / "sms.jsonl")}
        proc = start_worker(pg_url, broker, tmp_path / "worker.log", 2, notices)
        yield proc
        stop(proc, 30)


@pytest.fixture
def relay_thread(pg_app: App, broker: str) -> Iterator[threading.Event]:
    app = Celery("avrr-test")
    app.conf.update(celery_config(broker))
    stop = threading.Event()
    thread = threading.Thread(target=relay.run, args=(pg_app.db, app, stop, 0.2), daemon=True)
    thread.start()
    yield stop
    stop.set()
    thread.join(10)


def _tasks(app: App, case_id: str) -> list[str]:
    with app.db.connect() as conn:
        t = tb.tasks.c
        return sorted(conn.scalars(select(t.kind).where(t.case_id == case_id)))


def test_committed_transitions_reach_a_worker_and_create_their_tasks_once(
    pg_app: App, worker: subprocess.Popen[bytes], relay_thread: threading.Event
) -> None:
    case_id = advance_to(pg_app, "reintegration_counselling")
    events = [e for h in pg_app.views.history(case_id) for e in LIFECYCLE.by_trigger[h["trigger"]].events]
    expected = sorted(e.subject for event in events for e in runnable_effects(event) if e.kind == CREATE_TASK)

    wait_for(lambda: len(_tasks(pg_app, case_id)) >= len(expected))
    time.sleep(1.0)  # anything duplicated would arrive by now

    assert _tasks(pg_app, case_id) == expected
    assert {"request_travel_documents", "airport_reception", "reintegration_counselling"} <= set(expected)
    with pg_app.db.connect() as conn:
        assert (
            conn.scalar(select(func.count()).select_from(tb.outbox).where(tb.outbox.c.sent_at.is_(None))) == 0
        )
        statuses = set(conn.scalars(select(tb.jobs.c.status).where(tb.jobs.c.case_id == case_id)))
    assert statuses == {"done"}
    assert worker.poll() is None


def test_a_job_delivered_twice_creates_its_task_once(pg_app: App) -> None:
    case_id = advance_to(pg_app, "return_approved")
    with pg_app.db.connect() as conn:
        event_id = conn.scalar(select(tb.outbox.c.event_id).where(tb.outbox.c.event_type == "ReturnApproved"))
    (effect,) = [e for e in runnable_effects("ReturnApproved") if e.kind == CREATE_TASK]
    runner = EffectRunner(lambda: SqlJobStore(pg_app.db), SystemClock(), max_attempts=5)
    job = Job(event_id, "ReturnApproved", case_id, effect.name)

    assert [runner.run(job), runner.run(job)] == ["done", "done"]
    assert _tasks(pg_app, case_id) == ["request_travel_documents"]


def test_a_job_that_keeps_dying_is_dead_lettered_after_its_attempt_cap(pg_app: App) -> None:
    case_id = advance_to(pg_app, "return_approved")
    with pg_app.db.connect() as conn:
        event_id = conn.scalar(select(tb.outbox.c.event_id).where(tb.outbox.c.event_type == "ReturnApproved"))
    (effect,) = [e for e in runnable_effects("ReturnApproved") if e.kind == CREATE_TASK]
    store = SqlJobStore(pg_app.db)
    job = Job(event_id, "ReturnApproved", case_id, effect.name)
    for _ in range(3):  # three deliveries whose worker died mid-job: attempts counted, never finished
        store.start(job, SystemClock().now())

    outcome = EffectRunner(lambda: store, SystemClock(), max_attempts=3).run(job)

    assert outcome == "dead"
    assert _tasks(pg_app, case_id) == []
