"""Real Celery worker processes on Redis, the relay on PostgreSQL: each effect happens once."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery
from sqlalchemy import func, select, update

from config.celery import celery_config
from tests.integration.processes import RedisServer, start_worker, stop, wait_for
from tests.servers import smtp_server
from tests.support import advance_to, job_states
from workers import relay
from workflow.adapters import tables as tb
from workflow.adapters.channels.smtp import message_id
from workflow.adapters.clock import SystemClock
from workflow.adapters.jobs import SqlJobStore
from workflow.bootstrap import App
from workflow.demo import HOUSEHOLD
from workflow.domain.effects import CREATE_TASK
from workflow.domain.lifecycle import LIFECYCLE
from workflow.service_layer.effects import EffectRunner, Job, runnable_effects
from workflow.service_layer.notifications import idempotency_key

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


def _event_of(app: App, case_id: str, event_type: str) -> str:
    """The id of the case's event of that type."""
    o = tb.outbox.c
    with app.db.connect() as conn:
        event_id = conn.scalar(select(o.event_id).where(o.case_id == case_id, o.event_type == event_type))
    assert event_id is not None, f"no {event_type} for the case"
    return str(event_id)


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
    with pg_app.db.connect() as conn:  # the three made, not the refused fourth start
        filed = conn.execute(select(tb.dead_letters.c.attempts, tb.dead_letters.c.error)).one()
        kept = conn.scalar(select(tb.jobs.c.attempts).where(tb.jobs.c.event_id == event_id))
    assert (tuple(filed), kept) == ((3, "gave up after 3 attempts"), 3)


def test_one_message_per_event_retries_the_failing_job_and_leaves_its_done_task_alone(
    pg_app: App, pg_url: str, broker: str, relay_thread: threading.Event, tmp_path: Path
) -> None:
    """ReturnApproved's message carries two jobs: the family's notice, then the office's task. The
    SMTP server refuses for now (4xx): the task is made at once, the event's task retries for the
    notice alone, which goes out once the server takes mail again."""
    with smtp_server() as (smtp, inbox):
        inbox.rcpt_reply = "451 4.3.0 try again later"
        env = {"AVRR_SMTP_PORT": str(smtp.port), "AVRR_SMS_SINK": str(tmp_path / "sms.jsonl")}
        proc = start_worker(pg_url, broker, tmp_path / "worker.log", 2, env)
        try:
            case_id = advance_to(pg_app, "return_approved")
            event_id = _event_of(pg_app, case_id, "ReturnApproved")
            notice, task = (e.name for e in runnable_effects("ReturnApproved"))
            wait_for(
                lambda: job_states(pg_app, event_id).get(notice, ("", 0))[1] >= 2, 30, "a retry of the notice"
            )
            assert job_states(pg_app, event_id)[task] == ("done", 1)
            assert _tasks(pg_app, case_id) == ["request_travel_documents"]

            inbox.rcpt_reply = None  # the server takes mail again
            wait_for(lambda: job_states(pg_app, event_id)[notice][0] == "done", 30, "the notice sent")
            time.sleep(1.0)  # a duplicate would arrive by now
            rows = job_states(pg_app, event_id)
            assert rows[task] == ("done", 1) and rows[notice][1] >= 2
            assert _tasks(pg_app, case_id) == ["request_travel_documents"]
            # The notice's Message-ID, whatever the sender's domain: "<avrr.{key's hash}@".
            mine = message_id(idempotency_key(event_id, notice), "any@where").split("@")[0] + "@"
            assert len([m for m in inbox.received() if str(m["Message-ID"]).startswith(mine)]) == 1
            assert "avrr.events.handle" in (tmp_path / "worker.log").read_text(errors="replace")
        finally:
            stop(proc, 30)


def test_an_event_whose_job_was_dead_lettered_ends_as_a_failed_task_after_its_retries(
    pg_app: App, pg_url: str, broker: str, relay_thread: threading.Event, tmp_path: Path
) -> None:
    """TravelBooked's message: the family's address is refused for good (5xx: that job is filed
    in the dead letters at once) and the destination office's for now (4xx: the event retries).
    The run that finally sends the office's notice still ends as a failed task, so Flower and
    avrr_task_failures_total show the event that lost a notice."""
    office = "kyiv-office@avrr.example.org"
    with pg_app.db.begin() as conn:
        conn.execute(update(tb.offices).where(tb.offices.c.code == "kyiv").values(email=office))
    with smtp_server() as (smtp, inbox):
        inbox.rcpt_replies = {HOUSEHOLD[0]["email"]: "550 5.1.1 no such mailbox"}
        # The office's server refuses the first try for now, then takes mail: whatever the
        # retries' jitter (a retry may follow at once), the notice goes on the second attempt.
        inbox.rcpt_next = {office: ["451 4.3.0 later"]}
        env = {"AVRR_SMTP_PORT": str(smtp.port), "AVRR_SMS_SINK": str(tmp_path / "sms.jsonl")}
        log = tmp_path / "worker.log"
        proc = start_worker(pg_url, broker, log, 2, env)
        try:
            case_id = advance_to(pg_app, "travel_booked")
            event_id = _event_of(pg_app, case_id, "TravelBooked")
            family, _, to_office, _ = (e.name for e in runnable_effects("TravelBooked"))
            failed = f"JobsDeadLettered('{family}')"  # the earlier events' notices fail too
            wait_for(
                lambda: job_states(pg_app, event_id).get(to_office, ("", 0))[0] == "done", 30, "the notice"
            )
            assert job_states(pg_app, event_id)[to_office] == ("done", 2)  # refused once, then sent
            assert job_states(pg_app, event_id)[family] == ("dead", 1)  # filed by the first run
            wait_for(lambda: failed in log.read_text(errors="replace"), 10, "the task's failure")
            assert {state for state, _ in job_states(pg_app, event_id).values()} == {"done", "dead"}
            mine = {
                message_id(idempotency_key(event_id, e), "a@b").split("@")[0] for e in (family, to_office)
            }
            sent = [m["To"] for m in inbox.received() if str(m["Message-ID"]).split("@")[0] in mine]
            assert sent == [office]
        finally:
            stop(proc, 30)
