"""A backlog goes to the workers several events to a message (the relay packs it), and the
relay holds back while the workers' queue is full: real Redis, PostgreSQL, SMTP server and
`celery worker` processes."""

from __future__ import annotations

import errno
import fcntl
import multiprocessing
import re
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from sqlalchemy import func, select, text

from config.celery import MAX_ATTEMPTS, celery_config
from tests.integration.processes import QUEUE, RedisServer, queued_jobs, start_worker, stop, wait_for
from tests.servers import Inbox, smtp_server
from tests.support import advance_to, jobs_of, register
from workers import relay, tasks
from workers.jobs import EVENTS_TASK, event_args, send_events
from workflow.adapters import tables as tb
from workflow.adapters.db import make_engine
from workflow.adapters.jobs import EventLocks
from workflow.adapters.relay import OutboxRelay
from workflow.bootstrap import App
from workflow.demo import HOUSEHOLD
from workflow.service_layer.effects import Event, runnable_effects

pytestmark = pytest.mark.postgres
o, j = tb.outbox.c, tb.jobs.c
FAMILY = str(HOUSEHOLD[0]["email"])


@pytest.fixture
def celery(redis_server: RedisServer) -> Celery:
    app = Celery("avrr-test")
    app.conf.update(celery_config(redis_server.url()))
    return app


def _events(app: App) -> list[Event]:
    """Every event with jobs in the outbox, in commit order."""
    with app.db.connect() as conn:
        rows = conn.execute(select(o.event_id, o.event_type, o.case_id).order_by(o.id)).all()
    return [Event(*row) for row in rows if runnable_effects(row.event_type)]


def _jobs(app: App) -> list[tuple[str, str, str, int, float]]:
    """(case, event, status, attempts, started) of every job, in the order the jobs started."""
    with app.db.connect() as conn:
        rows = conn.execute(select(j.case_id, j.event_id, j.status, j.attempts, j.started_at)).all()
    return sorted(((r[0], r[1], r[2], r[3], r[4].timestamp()) for r in rows), key=lambda r: r[4])


def _unsent(app: App) -> int:
    with app.db.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(tb.outbox).where(o.sent_at.is_(None))) or 0)


@contextmanager
def _worker_and_mail(
    pg_url: str, redis_server: RedisServer, tmp_path: Path, concurrency: int, **inbox_settings: object
) -> Iterator[tuple[Inbox, Path]]:
    """An SMTP server (its inbox set up as given) and a real `celery worker` on the test's
    database and Redis; yields the inbox and the worker's log, and stops the worker after."""
    with smtp_server() as (smtp, inbox):
        for name, value in inbox_settings.items():
            setattr(inbox, name, value)
        env = {"AVRR_SMTP_PORT": str(smtp.port), "AVRR_SMS_SINK": str(tmp_path / "sms.jsonl")}
        log = tmp_path / "worker.log"
        worker = start_worker(pg_url, redis_server.url(), log, concurrency, env)
        try:
            yield inbox, log
        finally:
            stop(worker, 30)


def _received_once_done(app: App, inbox: Inbox, jobs: int, timeout: float) -> Counter[str]:
    """Once ``jobs`` jobs are done (and a second more, time for a duplicate to run), the
    e-mails received, by Message-ID."""
    wait_for(lambda: sum(r[2] == "done" for r in _jobs(app)) == jobs, timeout, f"{jobs} jobs done")
    time.sleep(1.0)  # a duplicate would have run by now
    return Counter(str(m["Message-ID"]) for m in inbox.received())


def test_a_backlog_goes_packed_runs_each_case_in_order_and_retries_an_event_on_its_own(
    pg_app: App, pg_url: str, redis_server: RedisServer, celery: Celery, tmp_path: Path
) -> None:
    """Events committed while no worker runs go out in one round: fewer messages than events,
    a case's events in one message. The family's server refuses the first e-mail for now: that
    event goes on in its own message as a retry; every other job runs once, in its case's order."""
    cases = [advance_to(pg_app, "return_approved") for _ in range(4)]
    events = _events(pg_app)
    expected = sum(len(jobs_of(pg_app, case)) for case in cases)
    rows = _unsent(pg_app)  # the events without jobs too: nothing to publish for them
    assert OutboxRelay(pg_app.db, relay.celery_publisher(celery)).relay_once() == rows
    broker = redis_server.client()
    messages = broker.llen(QUEUE)
    queued = queued_jobs(broker)
    assert sorted(args[0] for args in queued) == sorted(e.event_id for e in events)  # each once
    assert messages < len(events)

    refused_once = {FAMILY: ["451 4.3.0 try again later"]}  # the first e-mail to the family
    with _worker_and_mail(pg_url, redis_server, tmp_path, 2, rcpt_next=refused_once) as (inbox, log):
        received = _received_once_done(pg_app, inbox, expected, 60)
    ran = _jobs(pg_app)
    assert len(ran) == expected and {r[2] for r in ran} == {"done"}
    assert sorted(r[3] for r in ran) == [1] * (expected - 1) + [2]  # the refused e-mail, once more
    assert received and set(received.values()) == {1}  # no e-mail twice
    text = log.read_text(errors="replace")
    assert "avrr.events.handle_many" in text and "events.sent_on" in text
    # Each case's jobs that ran once started in the order of their events' commits.
    order = {e.event_id: i for i, e in enumerate(events)}
    for case in cases:
        firsts = [order[r[1]] for r in ran if r[0] == case and r[3] == 1]
        assert firsts == sorted(firsts), case


def test_an_event_that_fails_for_good_does_not_stop_the_others_of_its_message(
    pg_app: App, pg_url: str, redis_server: RedisServer, celery: Celery, tmp_path: Path
) -> None:
    """A message of three events whose middle one names a case that is not there: its jobs are
    filed in the dead letters, the events around it are done, and the task ends as failed."""
    case = advance_to(pg_app, "return_approved")
    first, *_, last = _events(pg_app)
    lost = Event(str(uuid.uuid4()), "ReturnApproved", str(uuid.uuid4()))
    with celery.producer_or_acquire() as producer:
        send_events(celery, [first, lost, last], producer)
    assert redis_server.client().llen(QUEUE) == 1
    with _worker_and_mail(pg_url, redis_server, tmp_path, 1) as (_, log):
        mine = {first.event_id, last.event_id}
        total = len(jobs_of(pg_app, case))
        wait_for(lambda: "JobsDeadLettered" in log.read_text(errors="replace"), 60, "the task's failure")
    with pg_app.db.connect() as conn:
        states = dict(conn.execute(select(j.event_id, j.status).where(j.event_id.in_(mine))).all())
        filed = conn.scalars(select(tb.dead_letters.c.event_id)).all()
    assert states == dict.fromkeys(mine, "done")
    assert set(filed) == {lost.event_id} and len(filed) == len(lost.jobs())
    assert total > len(mine)  # the case's other events were not sent: only these two ran


@contextmanager
def _relay_behind_a_full_queue(app: App, celery: Celery, gate: relay.QueueGate) -> Iterator[None]:
    """The relay's loop in a thread with ``gate``, behind two messages no worker takes (the
    queue is full for a gate holding at 2)."""
    for _ in range(2):
        celery.send_task("avrr.noop")
    halt = threading.Event()
    kwargs = {"heartbeat": None, "gate": gate}
    loop = threading.Thread(target=relay.run, args=(app.db, celery, halt, 0.2), kwargs=kwargs, daemon=True)
    loop.start()
    try:
        yield
    finally:
        halt.set()
        loop.join(10)


def test_the_relay_holds_events_while_the_queue_is_full_and_sends_them_packed_when_it_empties(
    pg_app: App, redis_server: RedisServer, celery: Celery
) -> None:
    broker = redis_server.client()
    gate = relay.QueueGate(celery, hold_at=2, longest=30.0)
    with _relay_behind_a_full_queue(pg_app, celery, gate):
        assert broker.llen(QUEUE) == 2
        for _ in range(4):
            advance_to(pg_app, "return_approved")
        events, rows = _events(pg_app), _unsent(pg_app)
        time.sleep(1.5)
        assert _unsent(pg_app) == rows  # held in the outbox: nothing went out
        assert broker.llen(QUEUE) == 2

        broker.delete(QUEUE)  # the workers took what waited
        wait_for(lambda: _unsent(pg_app) == 0, 10, "the held events sent")
        assert sorted(a[0] for a in queued_jobs(broker)) == sorted(e.event_id for e in events)
        assert broker.llen(QUEUE) < len(events)  # sent together, several to a message


def test_commits_that_follow_a_round_closely_wait_for_the_next_and_go_in_one_message(
    pg_app: App, redis_server: RedisServer, celery: Celery
) -> None:
    """The relay's linger: a commit goes out at once after a quiet spell; two commits right after
    that round wait until ``linger`` has passed since it started, and go out together."""
    broker = redis_server.client()
    halt = threading.Event()
    gate = relay.QueueGate(celery, hold_at=100)
    kwargs = {"heartbeat": None, "gate": gate, "linger": 1.5}
    loop = threading.Thread(target=relay.run, args=(pg_app.db, celery, halt, 0.2), kwargs=kwargs, daemon=True)
    loop.start()
    try:
        first = register(pg_app)
        wait_for(lambda: _unsent(pg_app) == 0, 5, "the first commit sent at once")
        sent = time.monotonic()
        later = [register(pg_app), register(pg_app)]
        time.sleep(max(0.0, sent + 0.5 - time.monotonic()))
        assert _unsent(pg_app) == 2  # lingering: the next round waits for the rest of 1.5 s
        assert broker.llen(QUEUE) == 1
        wait_for(lambda: _unsent(pg_app) == 0, 10, "the later commits sent")
        assert time.monotonic() - sent > 1.0
    finally:
        halt.set()
        loop.join(10)
    assert broker.llen(QUEUE) == 2  # the two later events in one message
    queued = [args[0] for args in queued_jobs(broker)]
    assert sorted(queued) == sorted(e for r in [first, *later] for e in r.event_ids)


def test_a_queue_that_stays_full_holds_events_back_no_longer_than_the_gate_allows(
    pg_app: App, redis_server: RedisServer, celery: Celery
) -> None:
    """With every worker away the queue never empties: events still reach the broker, held
    back at most ``longest`` each round, as they reached it before the relay had a gate."""
    gate = relay.QueueGate(celery, hold_at=2, longest=0.5)
    with _relay_behind_a_full_queue(pg_app, celery, gate):
        advance_to(pg_app, "return_approved")
        events = _events(pg_app)
        wait_for(lambda: _unsent(pg_app) == 0, 10, "the events sent despite the full queue")
        queued = [a[0] for a in queued_jobs(redis_server.client()) if a]  # not the no-ops
        assert sorted(queued) == sorted(e.event_id for e in events)
        mine = relay.QueueGate(celery, hold_at=2, longest=0.5)  # the loop's own is its thread's
        started = time.monotonic()
        assert mine.wait(threading.Event()) == pytest.approx(0.5, abs=0.3)
        assert time.monotonic() - started < 1.0
        mine.close()


def test_a_gate_holding_back_looks_at_the_queue_less_often_and_over_one_client(
    redis_server: RedisServer, celery: Celery
) -> None:
    """Each look is a round trip for the relay and Redis: while the queue stays full the pause
    between looks doubles from HOLD_PAUSE to HOLD_PAUSE_MOST, and every look goes over one
    client. At HOLD_PAUSE throughout, half a second held would be about 250 looks."""
    broker = redis_server.client()
    broker.rpush(QUEUE, "waiting", "waiting")

    def looks() -> int:
        return int(broker.info("commandstats").get("cmdstat_llen", {}).get("calls", 0))

    gate = relay.QueueGate(celery, hold_at=2, longest=0.5)
    try:
        before = looks()
        assert gate.wait(threading.Event()) == pytest.approx(0.5, abs=0.3)
        made = looks() - before
        client = gate.probe._client
        assert client is not None
        broker.delete(QUEUE)
        assert gate.wait(threading.Event()) < 0.1
        assert gate.probe._client is client
    finally:
        gate.close()
    assert 5 <= made <= 0.5 / relay.HOLD_PAUSE_MOST + 20  # at HOLD_PAUSE throughout: 170-250
    assert gate.probe._client is None


def test_a_broker_that_is_away_holds_nothing_back_and_costs_the_relay_no_wait() -> None:
    """The gate cannot see the queue: it lets the relay go on at once (its publish finds the
    broker away and backs off), and does not try again for a while."""
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    away = Celery("avrr-test")
    away.conf.update(celery_config(f"redis://127.0.0.1:{port}/0"))
    gate = relay.QueueGate(away, hold_at=1, longest=30.0)
    started = time.monotonic()
    assert gate.waiting() == 0
    assert gate.wait(threading.Event()) < 0.1
    assert time.monotonic() - started < 2.0  # one short try, not kombu's retries


def test_a_packed_message_cut_by_the_soft_time_limit_retries_that_event_and_sends_the_rest_on(
    pg_app: App, pg_url: str, redis_server: RedisServer, celery: Celery, tmp_path: Path
) -> None:
    """A message with a soft time limit of 2 s; the family's mail server takes 4 s to answer the
    first recipient. The first event of a message of three is cut short: it goes on as a retry,
    the two it did not reach go on together in one message, and each e-mail arrives once."""
    cases = [register(pg_app).case_id for _ in range(3)]
    events = _events(pg_app)
    assert [e.case_id for e in events] == cases and all(e.event_type == "InquiryRegistered" for e in events)
    # The message as the relay packs it, with a soft time limit of its own (the messages the
    # task sends on have the configured 60 s).
    args = [event_args(e) for e in events]
    celery.send_task(EVENTS_TASK, args=args, soft_time_limit=2, time_limit=30)
    with _worker_and_mail(pg_url, redis_server, tmp_path, 1, rcpt_delays=[4.0]) as (inbox, log):
        received = _received_once_done(pg_app, inbox, 3, 60)
    attempts = {r[1]: r[3] for r in _jobs(pg_app)}
    assert attempts == {events[0].event_id: 2, events[1].event_id: 1, events[2].event_id: 1}
    assert len(received) == 3 and set(received.values()) == {1}
    text = re.sub(r"\x1b\[[0-9;]*m", "", log.read_text(errors="replace"))  # no colours
    assert "Soft time limit (2s) exceeded for avrr.events.handle_many" in text
    assert "events.sent_on" in text and "not_reached=2" in text and "retried=1" in text
    assert len(re.findall(r"avrr\.events\.handle_many\[[0-9a-f-]+\] received", text)) == 2


def _hold_locks(url: str, ids: list[str], held: Any, release: Any) -> None:
    """Another worker process: holds the events until told to let go."""
    with EventLocks(make_engine(url)).running_alone(ids) as mine:
        held.put(sorted(mine))
        release.wait(30)


def test_on_sqlite_an_event_another_process_runs_is_skipped_and_free_again_after(tmp_path: Path) -> None:
    """The embedded default's workers are processes on one host: a byte-range lock per event in
    a file beside the database does what PostgreSQL's advisory locks do."""
    url = f"sqlite:///{tmp_path / 'avrr.sqlite3'}"
    ids = [str(uuid.uuid4()) for _ in range(3)]
    fork = multiprocessing.get_context("fork")
    held, release = fork.Queue(), fork.Event()
    other = fork.Process(target=_hold_locks, args=(url, ids[:2], held, release))
    other.start()
    try:
        assert held.get(timeout=30) == sorted(ids[:2])
        mine = EventLocks(make_engine(url))
        with mine.running_alone(ids) as first:
            assert first == {ids[2]}
        release.set()
        other.join(30)
        with mine.running_alone(ids) as second:
            assert second == set(ids)
    finally:
        release.set()
        other.join(30)


def test_on_sqlite_a_volume_without_byte_range_locks_runs_the_events_unlocked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a lock another process holds makes a copy pass over an event; a file system that
    refuses locks altogether (ENOLCK) runs them unlocked, as PostgreSQL's branch does when its
    locks are unavailable, instead of acknowledging every message unrun."""

    def no_locks(*_: object) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    locks = EventLocks(make_engine(f"sqlite:///{tmp_path / 'avrr.sqlite3'}"))
    monkeypatch.setattr(fcntl, "lockf", no_locks)
    ids = [str(uuid.uuid4()) for _ in range(2)]
    with locks.running_alone(ids) as mine:
        assert mine == set(ids)


def test_an_event_a_copy_of_its_message_runs_now_is_skipped_and_free_again_after(pg_app: App) -> None:
    """EventLocks: what one process's run holds, another's (a copy of the message) passes over;
    once the first ends, the events are free again. A kept connection the server ended is
    replaced before the locks are taken, so the copy still passes over what the other holds."""
    ids = [str(uuid.uuid4()) for _ in range(3)]
    mine, other = EventLocks(pg_app.db), EventLocks(pg_app.db)  # two processes' connections
    with mine.running_alone(ids[:2]) as first:
        assert first == set(ids[:2])
        with other.running_alone(ids) as second:
            assert second == {ids[2]}
    with other.running_alone(ids) as third:
        assert third == set(ids)
    with mine.running_alone(ids) as again:  # the same connection, reused
        assert again == set(ids)
    # Idle connections in the pool, from before the restart too (the pool hands them out first).
    idle = [pg_app.db.connect() for _ in range(3)]
    for conn in idle:
        conn.close()
    with pg_app.db.connect() as conn:  # the server ends every other session, as a restart would
        ended = conn.scalar(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
        assert ended >= 4  # the three idle ones and mine's kept one (other's too)
    with other.running_alone(ids[:1]) as held_elsewhere, mine.running_alone(ids) as renewed:
        assert held_elsewhere == {ids[0]} and renewed == set(ids[1:])
    with mine.running_alone(ids) as renewed, other.running_alone(ids) as beside:
        assert renewed == set(ids) and beside == set()


@pytest.mark.parametrize("packed", [False, True], ids=["one event a message", "three events a message"])
def test_two_copies_of_a_message_in_two_worker_processes_run_each_event_once(
    pg_app: App, pg_url: str, redis_server: RedisServer, celery: Celery, tmp_path: Path, packed: bool
) -> None:
    """Two copies of one message (as a relay killed before marking its batch sent publishes it
    again) reach two pool processes of a real worker at once. The family's mail server takes 5 s
    to answer the first recipient, so the first copy is still running when the second starts:
    the second passes over the events the first holds (EventLocks), and each job runs once and
    each e-mail arrives once. Without the locks the second copy counts a second attempt and sends
    the e-mail the first is still sending."""
    cases = [register(pg_app).case_id for _ in range(3 if packed else 1)]
    events = _events(pg_app)
    assert [e.case_id for e in events] == cases
    for _ in range(2):
        if packed:
            send_events(celery, events)
        else:
            celery.send_task("avrr.events.handle", args=[events[0].event_id, events[0].event_type, cases[0]])
    with _worker_and_mail(pg_url, redis_server, tmp_path, 2, rcpt_delays=[5.0]) as (inbox, log):
        received = _received_once_done(pg_app, inbox, len(events), 60)
        wait_for(lambda: not queued_jobs(redis_server.client()), 30, "both copies taken")
    assert {r[1]: r[3] for r in _jobs(pg_app)} == {e.event_id: 1 for e in events}
    assert len(received) == len(events) and set(received.values()) == {1}
    text = re.sub(r"\x1b\[[0-9;]*m", "", log.read_text(errors="replace"))
    skipped = "events.running_elsewhere" if packed else "event.running_elsewhere"
    assert text.count(skipped) == 1, "the second copy should have passed over the first's events"
    assert len(re.findall(r"avrr\.events\.handle(?:_many)?\[[0-9a-f-]+\] received", text)) == 2


def _each_once_none_dead(app: App, inbox: Inbox, log: Path) -> str:
    """Three e-mails, each once, no dead letters; the worker's log without its colours."""
    received = _received_once_done(app, inbox, 3, 90)
    assert len(received) == 3 and set(received.values()) == {1}
    with app.db.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(tb.dead_letters)) == 0
    return re.sub(r"\x1b\[[0-9;]*m", "", log.read_text(errors="replace"))


def test_a_packed_message_whose_statement_waits_past_the_soft_time_limit_retries_that_event(
    pg_app: App, pg_url: str, redis_server: RedisServer, celery: Celery, tmp_path: Path
) -> None:
    """A message of three events, soft time limit 2 s, hard 4 s, while another session holds a
    lock on the jobs table for 7 s: the first event's first statement waits on it, and the soft
    limit interrupts the wait. The run ends as a soft limit ends it (not as a failed statement,
    which would go on to the next event and wait again until the hard limit killed the
    process): the event goes on as a retry, the two it did not reach go on together, the
    worker's kept connection is replaced, and once the lock goes each e-mail arrives once and
    the dead letters stay empty."""
    cases = [register(pg_app).case_id for _ in range(3)]
    events = _events(pg_app)
    assert [e.case_id for e in events] == cases
    with _worker_and_mail(pg_url, redis_server, tmp_path, 1) as (inbox, log):
        wait_for(lambda: "ready." in log.read_text(errors="replace"), 30, "the worker ready")
        with pg_app.db.connect() as holder:
            holder.exec_driver_sql("LOCK TABLE jobs IN SHARE ROW EXCLUSIVE MODE")
            args = [event_args(e) for e in events]
            celery.send_task(EVENTS_TASK, args=args, soft_time_limit=2, time_limit=4)
            time.sleep(7.0)
            holder.rollback()
        text = _each_once_none_dead(pg_app, inbox, log)
    assert "Soft time limit (2s) exceeded for avrr.events.handle_many" in text
    assert "events.sent_on" in text and "not_reached=2" in text and "retried=1" in text
    assert "Hard time limit" not in text and "task.hard_time_limit" not in text


def _waiting_on_locks(app: App) -> list[str]:
    """The first words of the statements of this database that wait on a lock."""
    with app.db.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT left(query, 16) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        )
        return [row[0] for row in rows]


def test_a_packed_message_killed_by_the_hard_time_limit_goes_back_to_the_queue_and_runs_once(
    pg_app: App, pg_url: str, redis_server: RedisServer, celery: Celery, tmp_path: Path
) -> None:
    """A message of three events on its last retry, soft time limit 2 s, hard 4 s, while another
    session holds a lock on the jobs table: the soft limit interrupts the first event's start,
    the filing of that event (its retries spent) waits on the lock in turn, and the hard limit
    kills the pool process. The message goes back to the queue (acks late, no ack on a
    timeout), and the server ends the statement the killed process left waiting (nothing is
    filed). Once the copy back from the queue waits on the lock, the lock goes: each e-mail
    arrives once and the dead letters stay empty."""
    register(pg_app)
    register(pg_app)
    register(pg_app)
    args = [event_args(e) for e in _events(pg_app)]
    with _worker_and_mail(pg_url, redis_server, tmp_path, 1) as (inbox, log):
        wait_for(lambda: "ready." in log.read_text(errors="replace"), 30, "the worker ready")
        with pg_app.db.connect() as holder:
            holder.exec_driver_sql("LOCK TABLE jobs IN SHARE ROW EXCLUSIVE MODE")
            last = MAX_ATTEMPTS - 1  # the task's max_retries: the soft limit files the cut event
            celery.send_task(EVENTS_TASK, args=args, soft_time_limit=2, time_limit=4, retries=last)
            wait_for(
                lambda: "Hard time limit (4s) exceeded" in log.read_text(errors="replace"), 60, "the kill"
            )

            def only_the_copy_waits() -> bool:
                waiting = _waiting_on_locks(pg_app)
                return bool(waiting) and all(w.startswith("INSERT INTO jobs") for w in waiting)

            wait_for(
                only_the_copy_waits, 30, "the killed statement ended, the copy back from the queue waiting"
            )
            holder.rollback()
        text_ = _each_once_none_dead(pg_app, inbox, log)
    assert "Soft time limit (2s) exceeded for avrr.events.handle_many" in text_
    assert (
        len(re.findall(r"avrr\.events\.handle_many\[[0-9a-f-]+\] received", text_)) >= 2
    )  # back from the queue


class _Requeued(Exception):
    pass


def test_a_replayed_job_whose_event_another_process_runs_waits_its_turn(
    pg_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`avrr.effects.run` (a replayed dead letter) takes its event's lock: while a copy of the
    event's message runs in another process, the job is retried later, not run beside it."""
    case_id = register(pg_app).case_id
    job = jobs_of(pg_app, case_id)[0]
    ran: list[str] = []

    class Runner:
        def run(self, job: Any) -> str:
            ran.append(job.effect)
            return "done"

    def requeue(task: Any, **options: Any) -> None:
        raise _Requeued(options["countdown"])

    monkeypatch.setattr(tasks, "_locks", lambda: EventLocks(pg_app.db))
    monkeypatch.setattr(tasks, "_runner", Runner)
    monkeypatch.setattr(tasks, "_retry", requeue)

    def replay() -> Any:
        tasks.run_effect.push_request(id="replay-1", retries=0, called_directly=False, delivery_info={})
        try:
            return tasks.run_effect.run(job.event_id, job.event_type, job.case_id, job.effect)
        finally:
            tasks.run_effect.pop_request()

    with EventLocks(pg_app.db).running_alone([job.event_id]) as elsewhere:
        assert elsewhere == {job.event_id}
        with pytest.raises(_Requeued) as requeued:
            replay()
    assert ran == [] and float(requeued.value.args[0]) > 0
    assert replay() == "done" and ran == [job.effect]
