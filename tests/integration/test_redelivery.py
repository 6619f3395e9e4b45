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
from sqlalchemy import func, insert, select, update

from config.celery import MAX_ATTEMPTS, celery_config
from tests.integration.processes import RedisServer, start_worker, stop, wait_for
from tests.servers import smtp_server
from tests.support import advance_to, jobs_of
from workers import relay
from workflow.adapters import tables as tb
from workflow.adapters.jobs import SqlDeadLetters, SqlJobStore
from workflow.adapters.relay import MAX_SENDS, OutboxMessage, OutboxRelay, Sweep
from workflow.bootstrap import App, effect_runner
from workflow.service_layer.effects import Event, Job, runnable_effects

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


def _backdate(app: App, case_id: str, sent: timedelta) -> None:
    """The case's events were sent this long ago."""
    with app.db.begin() as conn:
        conn.execute(update(tb.outbox).where(o.case_id == case_id).values(sent_at=datetime.now(UTC) - sent))


def _finish(
    app: App, jobs: Sequence[Job], started: datetime, statuses: Sequence[str], attempts: int = 1
) -> None:
    with app.db.begin() as conn:
        for job, status in zip(jobs, statuses, strict=True):
            conn.execute(
                insert(tb.jobs),
                {
                    "event_id": job.event_id,
                    "effect": job.effect,
                    "case_id": job.case_id,
                    "event_type": job.event_type,
                    "status": status,
                    "attempts": attempts,
                    "started_at": started,
                    "finished_at": None if status == "running" else started,
                },
            )


def _only_last_event_unsettled(app: App, case_id: str) -> str:
    """The case's earlier events' jobs are done: only its last event's are not. Returns its id."""
    jobs = jobs_of(app, case_id)
    last = jobs[-1].event_id
    earlier = [job for job in jobs if job.event_id != last]
    _finish(app, earlier, datetime.now(UTC) - timedelta(days=3), ["done"] * len(earlier))
    return last


def _settled(app: App, case_id: str) -> dict[str, bool]:
    with app.db.connect() as conn:
        rows = conn.execute(select(o.event_id, o.settled_at).where(o.case_id == case_id))
        return {event_id: settled is not None for event_id, settled in rows}


def test_sent_events_whose_jobs_never_finished_go_again_and_settled_ones_are_marked(app: App) -> None:
    case_id = advance_to(app, "return_approved")
    published: list[str] = []
    outbox = _relay(app, published)
    assert outbox.relay_once() > 0
    events = _with_effects(app, case_id)
    assert published == events  # each event with effects once (the others carry no message)

    # Sent just now: still in flight as far as anyone can tell.
    published.clear()
    assert outbox.redeliver_stalled(after=timedelta(minutes=15)) == Sweep()

    # The first event's jobs are finished (one done, any others dead-lettered): it is settled.
    first = [job for job in jobs_of(app, case_id) if job.event_id == events[0]]
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    _finish(app, first, an_hour_ago, ["done"] + ["dead"] * (len(first) - 1))
    _backdate(app, case_id, timedelta(hours=1))
    sweep = outbox.redeliver_stalled(after=timedelta(minutes=15))
    with app.db.connect() as conn:
        sent = conn.scalar(select(func.count()).select_from(tb.outbox).where(o.case_id == case_id))
    # Settled: the first event, and the events without effects (nothing to wait for).
    assert (sweep.resent, sweep.settled, sweep.given_up) == (len(events) - 1, sent - len(events) + 1, ())
    assert published == events[1:]
    attempts, settled = _attempts(app, case_id), _settled(app, case_id)
    assert [attempts[e] for e in events] == [1] + [2] * (len(events) - 1)
    assert [settled[e] for e in events] == [True] + [False] * (len(events) - 1)

    # Stamped sent again: each goes at most once per period.
    published.clear()
    assert outbox.redeliver_stalled(after=timedelta(minutes=1)) == Sweep()
    assert published == []


def test_an_event_whose_job_started_lately_is_left_to_its_retries(app: App) -> None:
    case_id = advance_to(app, "application_submitted")
    published: list[str] = []
    outbox = _relay(app, published)
    outbox.relay_once()
    job = jobs_of(app, case_id)[-1]
    # Sent an hour ago; its job started a minute ago (between attempts: its retry waits).
    _backdate(app, case_id, timedelta(hours=1))
    _finish(app, [job], datetime.now(UTC) - timedelta(minutes=1), ["running"])
    published.clear()
    outbox.redeliver_stalled(after=timedelta(minutes=15))
    assert job.event_id not in published
    outbox.redeliver_stalled(after=timedelta(seconds=30))  # its job has been quiet for longer
    assert job.event_id in published


def test_jobs_left_running_when_their_filing_failed_go_again_and_end_in_the_dead_letters(app: App) -> None:
    """The event's task spent its retries while the database was away, so on_failure could not
    file its jobs and the message was acknowledged: the jobs stay "running" at their attempt cap.
    The search sends the event again, and its run files them instead of trying a sixth time."""
    case_id = advance_to(app, "application_submitted")
    published: list[str] = []
    outbox = _relay(app, published)
    outbox.relay_once()
    last = _only_last_event_unsettled(app, case_id)
    jobs = [job for job in jobs_of(app, case_id) if job.event_id == last]
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    _backdate(app, case_id, timedelta(hours=1))
    _finish(app, jobs, an_hour_ago, ["running"] * len(jobs), attempts=MAX_ATTEMPTS)
    published.clear()
    assert outbox.redeliver_stalled(after=timedelta(minutes=15)).resent == 1
    assert published == [last]

    message = Event(last, jobs[0].event_type, case_id)  # what the resent message carries
    run = effect_runner(app.db, MAX_ATTEMPTS).run_event(message)
    assert [job.effect for job in run.dead] == [job.effect for job in jobs] and not run.failures
    with app.db.connect() as conn:
        filed = conn.execute(
            select(tb.dead_letters.c.effect, tb.dead_letters.c.attempts, tb.dead_letters.c.error).where(
                tb.dead_letters.c.event_id == last
            )
        ).all()
        statuses = set(conn.scalars(select(tb.jobs.c.status).where(tb.jobs.c.event_id == last)))
    assert sorted((effect, error) for effect, _, error in filed) == sorted(
        (job.effect, f"gave up after {MAX_ATTEMPTS} attempts") for job in jobs
    )
    assert all(attempts == MAX_ATTEMPTS for _, attempts, _ in filed)  # the refused start does not count
    assert statuses == {"dead"}
    _backdate(app, case_id, timedelta(hours=1))
    assert outbox.redeliver_stalled(after=timedelta(minutes=15)).settled >= 1
    assert _settled(app, case_id)[last]


def test_an_event_sent_four_times_and_never_run_is_given_up(app: App, tmp_path: Path) -> None:
    """Through the relay's Sweeper (on the embedded default's file broker, empty): the event
    goes three more times, then its jobs are filed in the dead letters and it is settled."""
    case_id = advance_to(app, "application_submitted")
    published: list[str] = []
    outbox = _relay(app, published)
    outbox.relay_once()
    event = _only_last_event_unsettled(app, case_id)
    files = Celery("avrr-test")
    files.conf.update(celery_config(None, data_dir=tmp_path))
    for folder in ("broker", "broker-processed", "broker-control"):  # as workers/app.py makes them
        (tmp_path / folder).mkdir()
    sweep = relay.Sweeper(outbox, files, timedelta(minutes=15), relay.file_lost(app.db))
    sweep()  # the first empty queue seen: settles, sends nothing again yet
    assert published.count(event) == 1
    for sends in range(2, MAX_SENDS + 1):
        _backdate(app, case_id, timedelta(hours=1))
        sweep()
        assert published.count(event) == sends
    _backdate(app, case_id, timedelta(hours=1))
    sweep()
    assert published.count(event) == MAX_SENDS  # the first send and three more, no fifth
    letters = SqlDeadLetters(app.db).open()
    error = f"message lost: sent {MAX_SENDS} times, never run"
    assert {(d.event_id, d.error) for d in letters} == {(event, error)}
    assert _settled(app, case_id)[event]
    _backdate(app, case_id, timedelta(hours=2))
    assert outbox.redeliver_stalled(timedelta(minutes=15)) == Sweep()  # settled: not looked at again
    files.close()


def test_an_event_with_only_some_jobs_finished_is_not_settled(app: App) -> None:
    case_id = advance_to(app, "return_approved")  # ReturnApproved: a notice and a task
    published: list[str] = []
    outbox = _relay(app, published)
    outbox.relay_once()
    event = _only_last_event_unsettled(app, case_id)
    _, task = [job for job in jobs_of(app, case_id) if job.event_id == event]
    _finish(app, [task], datetime.now(UTC) - timedelta(hours=1), ["done"])
    _backdate(app, case_id, timedelta(hours=1))
    published.clear()
    outbox.redeliver_stalled(timedelta(minutes=15))
    assert not _settled(app, case_id)[event] and published == [event]


def test_a_replayed_dead_letter_is_watched_again_with_a_fresh_budget(app: App) -> None:
    case_id = advance_to(app, "application_submitted")
    published: list[str] = []
    outbox = _relay(app, published)
    outbox.relay_once()
    _only_last_event_unsettled(app, case_id)
    job = jobs_of(app, case_id)[-1]
    _backdate(app, case_id, timedelta(days=3))
    _finish(app, [job], datetime.now(UTC) - timedelta(days=3), ["running"])
    SqlJobStore(app.db).dead_letter(job, "PermanentDeliveryError: refused", datetime.now(UTC))
    outbox.redeliver_stalled(timedelta(minutes=15))  # every job finished: settled
    assert _settled(app, case_id)[job.event_id]

    replayed: list[Job] = []
    SqlDeadLetters(app.db).replay(None, datetime.now(UTC), replayed.append)
    assert replayed == [job]
    assert not _settled(app, case_id)[job.event_id] and _attempts(app, case_id)[job.event_id] == 1
    published.clear()
    outbox.redeliver_stalled(timedelta(minutes=15))  # the replay's message is on its way
    assert published == []
    _backdate(app, case_id, timedelta(hours=1))
    with app.db.begin() as conn:  # ... and was lost: the job never started again
        conn.execute(
            update(tb.jobs)
            .where(tb.jobs.c.event_id == job.event_id)
            .values(started_at=datetime.now(UTC) - timedelta(hours=1))
        )
    outbox.redeliver_stalled(timedelta(minutes=15))
    assert published == [job.event_id]


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


@pytest.mark.postgres
def test_nothing_goes_again_while_messages_wait_in_the_queue(pg_app: App, redis_server: RedisServer) -> None:
    """Workers down: the events wait in Redis, unsettled. The sweep leaves them, so no copies
    pile up behind them however long the outage; once the queue is empty they can go again."""
    celery = Celery("avrr-test")
    celery.conf.update(celery_config(redis_server.url()))
    outbox = OutboxRelay(pg_app.db, relay.celery_publisher(celery), jobs_per_type=relay.jobs_per_type())
    case_id = advance_to(pg_app, "return_approved")
    outbox.relay_once()
    _backdate(pg_app, case_id, timedelta(hours=1))
    before = _attempts(pg_app, case_id)
    sweep = relay.Sweeper(outbox, celery, timedelta(minutes=15), relay.file_lost(pg_app.db))
    assert not relay.queue_is_empty(celery)
    sweep()
    sweep()
    assert _attempts(pg_app, case_id) == before

    redis_server.client().flushdb()  # lost after all
    assert relay.queue_is_empty(celery)
    sweep()  # empty once: a message a worker reserved may not have started yet
    assert _attempts(pg_app, case_id) == before
    sweep()  # empty twice in a row: lost
    events = _with_effects(pg_app, case_id)
    assert [_attempts(pg_app, case_id)[e] for e in events] == [2] * len(events)
    celery.close()


@pytest.mark.postgres
def test_a_sweep_goes_on_in_rounds_until_the_rows_that_came_of_age_are_all_looked_at(
    pg_app: App, redis_server: RedisServer
) -> None:
    celery = Celery("avrr-test")
    celery.conf.update(celery_config(redis_server.url()))
    outbox = OutboxRelay(pg_app.db, lambda batch: None, batch_size=1, jobs_per_type=relay.jobs_per_type())
    case_id = advance_to(pg_app, "closed")
    while outbox.relay_once():
        pass
    jobs = jobs_of(pg_app, case_id)
    _finish(pg_app, jobs, datetime.now(UTC) - timedelta(hours=1), ["done"] * len(jobs))
    _backdate(pg_app, case_id, timedelta(hours=1))
    settled = _settled(pg_app, case_id)
    assert len(settled) > 2 * outbox.sweep_size and not any(settled.values())
    relay.Sweeper(outbox, celery, timedelta(minutes=15), relay.file_lost(pg_app.db))()
    assert all(_settled(pg_app, case_id).values())
    celery.close()
