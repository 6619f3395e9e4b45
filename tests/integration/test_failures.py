"""Failures with real processes (issue 3): Redis dies and comes back, a worker is killed in the
middle of a handler, a relay dies between publishing and marking sent, three relays share the
outbox. Every effect still happens, and happens once.

Effects are observed through the ``jobs`` table (one row per (event, effect), status 'done',
``attempts`` counting the handler runs that found the job unfinished) and the ``tasks`` table.
"""

from __future__ import annotations

import os
import random
import re
import signal
import sys
import threading
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, insert, select, text

from tests.integration.processes import (
    QUEUE,
    Popen,
    RedisServer,
    queued_jobs,
    restore_now,
    spawn,
    start_relay,
    start_worker,
    stop,
    unacked_since,
    wait_for,
    wait_for_pool,
)
from tests.servers import smtp_server
from tests.support import advance_to, register
from workflow.adapters import tables as tb
from workflow.bootstrap import App
from workflow.demo import STEPS
from workflow.domain.lifecycle import LIFECYCLE
from workflow.service_layer.effects import runnable_effects

pytestmark = pytest.mark.postgres
o, j, t = tb.outbox.c, tb.jobs.c, tb.tasks.c
JobKey = tuple[str, str]  # (event_id, effect)


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def processes() -> Iterator[list[Popen]]:
    """Every process a test starts, stopped at the end whatever happened."""
    started: list[Popen] = []
    yield started
    for proc in reversed(started):
        stop(proc)


@pytest.fixture
def broker(redis_server: RedisServer) -> RedisServer:
    return redis_server


@pytest.fixture
def channels(tmp_path: Path) -> Iterator[dict[str, str]]:
    """Where the workers send notices: a real SMTP server and the SMS file sink."""
    with smtp_server() as (controller, _):
        yield {
            "AVRR_SMTP_HOST": "127.0.0.1",
            "AVRR_SMTP_PORT": str(controller.port),
            "AVRR_SMS_SINK": str(tmp_path / "sms.jsonl"),
        }


# -- what the database says -------------------------------------------------------------------


def expected_jobs(db: Engine) -> set[JobKey]:
    """One job per runnable effect of every event in the outbox."""
    with db.connect() as conn:
        events = conn.execute(select(o.event_id, o.event_type)).all()
    return {
        (event_id, effect.name) for event_id, event_type in events for effect in runnable_effects(event_type)
    }


def jobs(db: Engine) -> dict[JobKey, tuple[str, int]]:
    with db.connect() as conn:
        rows = conn.execute(select(j.event_id, j.effect, j.status, j.attempts)).all()
    return {(r.event_id, r.effect): (r.status, r.attempts) for r in rows}


def done_jobs(db: Engine) -> int:
    with db.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(tb.jobs).where(j.status == "done")) or 0)


def unsent(db: Engine) -> int:
    with db.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(tb.outbox).where(o.sent_at.is_(None))) or 0)


def sent(db: Engine) -> int:
    with db.connect() as conn:
        return int(
            conn.scalar(select(func.count()).select_from(tb.outbox).where(o.sent_at.is_not(None))) or 0
        )


def task_keys(db: Engine) -> list[tuple[str, str]]:
    """(source event, kind) of every task, duplicates included."""
    with db.connect() as conn:
        return [(r.source_event_id, r.kind) for r in conn.execute(select(t.source_event_id, t.kind))]


def task_effects(expected: set[JobKey]) -> set[JobKey]:
    return {key for key in expected if key[1].startswith("create_task:")}


def all_done(db: Engine, expected: set[JobKey]) -> bool:
    return done_jobs(db) >= len(expected)


# -- 1. Redis dies in the middle of a stream of transitions -----------------------------------

CASES = 20


def fire_story(app: App, case_ids: list[str], progress: list[str], pause: float) -> None:
    """Walks every case through the seed story, a step at a time round the cases."""
    for step in STEPS:
        for case_id in case_ids:
            payload = step.payload(app.views.case(case_id)) if callable(step.payload) else step.payload
            app.transitions.fire(case_id, step.trigger, step.actor, payload)
            progress.append(step.trigger)
            time.sleep(pause)


def test_redis_killed_and_restarted_mid_stream_loses_nothing_and_runs_each_job_once(
    pg_url: str,
    pg_app: App,
    broker: RedisServer,
    channels: dict[str, str],
    processes: list[Popen],
    tmp_path: Path,
) -> None:
    worker = start_worker(pg_url, broker.url(), tmp_path / "worker.log", 2, channels)
    processes.append(worker)
    # A message the worker took off the queue (BRPOP) as Redis died, before kombu recorded it as
    # unacknowledged, is gone from Redis: the relay's search for lost messages sends it again
    # (after 15 minutes in production; 5 s here, looking every second).
    processes.append(start_relay(pg_url, broker.url(), tmp_path / "relay.log", redeliver_after=5.0))
    wait_for_pool(worker, 2)
    case_ids = [register(pg_app).case_id for _ in range(CASES)]
    total = CASES * len(STEPS)
    progress: list[str] = []
    failures: list[BaseException] = []

    def stream() -> None:
        try:
            fire_story(pg_app, case_ids, progress, pause=0.01)
        except BaseException as exc:  # the assertion below reports it
            failures.append(exc)

    firing = threading.Thread(target=stream, daemon=True)
    firing.start()
    # Mid-stream: events have gone through Redis and jobs have run, many transitions are to come.
    wait_for(lambda: len(progress) > total // 4 and done_jobs(pg_app.db) > 20, 30, "a quarter of the story")
    broker.kill(signal.SIGKILL)
    killed_at, killed_wall = len(progress), time.time()
    time.sleep(3.0)
    assert len(progress) > killed_at, "transitions commit while the broker is down"
    assert firing.is_alive(), "the stream should still be running when Redis comes back"
    broker.start()

    # The supervisor's part (docker-compose restarts the worker): Celery 5.7's worker exits on
    # "Unrecoverable error: AttributeError(... 'hostname')" when it loses Redis holding an
    # unacknowledged message, as it does when busy. A worker that reconnects is kept.
    log = tmp_path / "worker.log"
    wait_for(
        lambda: worker.poll() is not None or log.read_text(errors="replace").count("Connected to redis") > 1,
        30,
        "the worker to reconnect or exit",
    )
    if worker.poll() is not None:
        warnings.warn(
            f"the worker exited ({worker.returncode}) when Redis went away: restarted", stacklevel=1
        )
        worker = start_worker(pg_url, broker.url(), tmp_path / "worker-2.log", 2, channels)
        processes.append(worker)
    # What was delivered before the outage and never acknowledged waits for the visibility
    # timeout (360 s) before Redis hands it out again: let that time pass now.
    stranded = unacked_since(broker.client(), killed_wall)
    restore_now(broker.url(), list(stranded))
    stranded_events = {args[0] for held in stranded.values() for args in held}

    firing.join(60)
    assert not failures, failures
    assert len(progress) == total

    wait_for(lambda: unsent(pg_app.db) == 0, 60, "the relay to send every outbox row")
    expected = expected_jobs(pg_app.db)
    wait_for(lambda: all_done(pg_app.db, expected), 60, f"{len(expected)} jobs done")
    time.sleep(1.0)  # a duplicate delivery would have run by now

    with pg_app.db.connect() as conn:
        history = conn.execute(select(tb.case_history.c.trigger)).scalars().all()
        states = Counter(conn.execute(select(tb.cases.c.state)).scalars())
        outbox_rows = conn.scalar(select(func.count()).select_from(tb.outbox))
    assert len(history) == CASES * (len(STEPS) + 1)  # registration + every step, all committed
    assert states == {"closed": CASES}
    assert outbox_rows == sum(len(LIFECYCLE.by_trigger[trigger].events) for trigger in history)
    assert unsent(pg_app.db) == 0
    ran = jobs(pg_app.db)
    assert set(ran) == expected  # none lost, none unexpected
    assert Counter(status for status, _ in ran.values()) == {"done": len(expected)}
    # Each handler ran once; a job whose event's delivery the outage stranded may have been cut
    # short (its worker died) and run again: at most twice.
    assert {key: n for key, (_, n) in ran.items() if n != 1 and key[0] not in stranded_events} == {}
    assert {key: n for key, (_, n) in ran.items() if n > 2} == {}
    tasks = task_keys(pg_app.db)
    assert len(tasks) == len(set(tasks)) == len(task_effects(expected))
    assert worker.poll() is None
    print(f"stranded deliveries restored: {len(stranded)}, jobs: {len(expected)}")


# -- 2. kill -9 of a worker's pool process in the middle of a handler -------------------------

BLOCKED_BY = text(
    "SELECT a.pid, a.query FROM pg_stat_activity a WHERE :holder = ANY(pg_blocking_pids(a.pid))"
)


def test_a_pool_process_killed_mid_handler_runs_the_job_again_and_its_effect_happens_once(
    pg_url: str,
    pg_app: App,
    broker: RedisServer,
    channels: dict[str, str],
    processes: list[Popen],
    tmp_path: Path,
) -> None:
    """The test holds an ACCESS EXCLUSIVE lock on ``tasks``: the first task job waits for the
    lock inside its statement, provably mid-handler. On its message's first delivery that one
    statement writes the job's row too (create_task_first), so nothing is counted yet. SIGKILL
    of that pool process: with acks_late and reject_on_worker_lost the worker's main process
    puts the message straight back on the queue, marked redelivered, and forks a new pool
    process, which runs it again the ordinary way: its attempt counted, then the task.

    Only the pool process is killed. Killing the whole worker (main process included) would
    leave the message unacknowledged in Redis until the visibility timeout (360 s, see
    config/celery.py) made Redis hand it out again: the same outcome, too slow for a test."""
    advance_to(pg_app, "return_approved")
    expected = expected_jobs(pg_app.db)
    assert task_effects(expected), "the story up to return_approved creates tasks"
    worker = start_worker(pg_url, broker.url(), tmp_path / "worker.log", 1, channels)
    processes.append(worker)
    (pool,) = wait_for_pool(worker, 1)

    with pg_app.db.connect() as holder:
        holder.execute(text("LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE"))  # in an open transaction
        holder_pid = holder.execute(text("SELECT pg_backend_pid()")).scalar_one()

        def blocked() -> dict[int, str]:
            with pg_app.db.connect() as conn:
                return {row.pid: row.query for row in conn.execute(BLOCKED_BY, {"holder": holder_pid})}

        processes.append(start_relay(pg_url, broker.url(), tmp_path / "relay.log"))
        ((first, query),) = wait_for(blocked, 30, "a handler waiting for the lock on tasks").items()
        # The task, the job's row and its done: one statement, its INSERTs in a WITH clause.
        assert "INSERT INTO TASKS" in query.upper() and "INSERT INTO JOBS" in query.upper()
        before = jobs(pg_app.db)
        assert not [k for k, (status, _) in before.items() if status == "running"]
        waiting = task_effects(expected) - set(before)

        os.kill(pool, signal.SIGKILL)
        (new_pool,) = wait_for(lambda: [p for p in wait_for_pool(worker, 1) if p != pool], 30, "a new pool")

        # Redelivered at once, now counted before its task, and waiting for the same lock again.
        def running() -> list[tuple[JobKey, int]]:
            return [(k, n) for k, (status, n) in jobs(pg_app.db).items() if status == "running"]

        ((key, attempts),) = wait_for(running, 30, "the job's attempt counted on its redelivery")
        assert key in waiting and attempts == 1

        # The dead process's statement is ended by the server (workflow/adapters/db.py, the client
        # check), not left to run once the lock goes; the second attempt waits in its place.
        def second_alone() -> bool:
            now = blocked()
            return bool(now) and first not in now

        wait_for(second_alone, 30, "the second attempt alone at the lock")
        holder.rollback()  # releases the lock

    wait_for(lambda: all_done(pg_app.db, expected), 60, f"{len(expected)} jobs done")
    time.sleep(1.0)  # a duplicate delivery would have run by now
    ran = jobs(pg_app.db)
    assert set(ran) == expected
    assert ran[key] == ("done", 1)  # the killed first delivery counted nothing
    assert {k: v for k, v in ran.items() if k != key} == {k: ("done", 1) for k in expected - {key}}
    tasks = task_keys(pg_app.db)
    assert len(tasks) == len(set(tasks)) == len(task_effects(expected))
    event_id, effect = key
    assert [kind for source, kind in tasks if source == event_id] == [effect.split(":")[1]]
    assert unsent(pg_app.db) == 0
    assert worker.poll() is None and wait_for_pool(worker, 1) == [new_pool]


# -- 3. the relay dies after publishing, before marking the rows sent -------------------------

# Publishes the batch for real, then dies before relay_once commits: the crash point.
CRASH_AFTER_PUBLISH = """
celery_publisher = relay.celery_publisher

def publish_then_die(app, *args, **kwargs):
    publish = celery_publisher(app, *args, **kwargs)

    def publish_batch(batch):
        publish(batch)
        print(f"published {len(batch)} outbox rows; dying before the commit", flush=True)
        os._exit(9)

    return publish_batch

relay.celery_publisher = publish_then_die
"""
RECEIVED = re.compile(r"avrr\.events\.handle(?:_many)?\[([0-9a-f-]+)\] received")


def test_a_relay_killed_between_publish_and_commit_publishes_again_and_each_effect_happens_once(
    pg_url: str,
    pg_app: App,
    broker: RedisServer,
    channels: dict[str, str],
    processes: list[Popen],
    tmp_path: Path,
) -> None:
    for _ in range(3):
        advance_to(pg_app, "return_approved")
    expected = expected_jobs(pg_app.db)
    events = {event_id for event_id, _ in expected}  # one message each, its jobs run in turn
    rows = unsent(pg_app.db)
    redis_client = broker.client()

    crashing = start_relay(pg_url, broker.url(), tmp_path / "relay-1.log", patch=CRASH_AFTER_PUBLISH)
    assert crashing.wait(30) == 9
    # The rows are still unsent: the transaction that marked them died with the process.
    assert unsent(pg_app.db) == rows
    with pg_app.db.connect() as conn:
        assert set(conn.scalars(select(o.attempts))) == {0}
    first = queued_jobs(redis_client)
    assert len(first) == len(events) and {a[0] for a in first} == events

    processes.append(start_relay(pg_url, broker.url(), tmp_path / "relay-2.log"))
    wait_for(lambda: unsent(pg_app.db) == 0, 30, "the second relay to send every row")
    queued = Counter(a[0] for a in queued_jobs(redis_client))
    assert queued == dict.fromkeys(events, 2)  # every event is on the queue twice
    messages = redis_client.llen(QUEUE)  # some carry several events (the relay packs a batch)

    log = tmp_path / "worker.log"
    processes.append(start_worker(pg_url, broker.url(), log, 2, channels))

    def received() -> set[str]:  # task ids the worker logged as received
        return set(RECEIVED.findall(log.read_text(errors="replace")))

    wait_for(lambda: len(received()) == messages, 60, "both deliveries of every event")
    wait_for(lambda: redis_client.llen(QUEUE) == 0 and redis_client.hlen("unacked") == 0, 30, "acks")
    wait_for(lambda: all_done(pg_app.db, expected), 30, f"{len(expected)} jobs done")

    # The second delivery of each event found its jobs done: one handler run each, one task each.
    assert jobs(pg_app.db) == dict.fromkeys(expected, ("done", 1))
    tasks = task_keys(pg_app.db)
    assert len(tasks) == len(set(tasks)) == len(task_effects(expected))
    assert len(received()) == messages  # no message went a third time


# -- 4. three relays at once over 10,000 outbox rows ------------------------------------------

ROWS, OUTBOX_CASES, RELAYS = 10_000, 500, 3
# OutboxRelay with a publisher that appends "case_id:outbox_id" to a Redis list. Each relay
# reports ready, waits for the common start signal, and stops once no row is unsent.
LIST_RELAY_SCRIPT = """
import sys, time
import redis
from sqlalchemy import func, select
from workflow.adapters import tables as tb
from workflow.adapters.db import make_engine
from workflow.adapters.relay import OutboxRelay

database_url, redis_url, name = sys.argv[1:4]
client = redis.Redis.from_url(redis_url)
engine = make_engine(database_url, pool_size=2)
unsent = select(func.count()).select_from(tb.outbox).where(tb.outbox.c.sent_at.is_(None))

def publish(batch):
    client.rpush("published", *[f"{m.case_id}:{m.id}" for m in batch])
    client.hincrby("published_by", name, len(batch))

relay = OutboxRelay(engine, publish)
client.rpush("ready", name)
assert client.blpop(["go:" + name], timeout=60), "no start signal"
while True:
    if relay.relay_once():
        continue
    with engine.connect() as conn:
        if not conn.scalar(unsent):
            break
    time.sleep(0.005)  # the rows left are another relay's, or wait behind one of its rows
"""


def test_three_relays_share_10000_rows_each_published_once_in_order_per_case(
    pg_url: str,
    pg_app: App,
    broker: RedisServer,
    processes: list[Popen],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # outbox.case_id has no foreign key: rows need no cases. Shuffled, so a batch of 500 holds
    # rows of hundreds of cases and the relays keep meeting each other's cases.
    order = [f"case-{n % OUTBOX_CASES:04d}" for n in range(ROWS)]
    random.Random(3).shuffle(order)
    versions: Counter[str] = Counter()
    rows = []
    for position, case_id in enumerate(order, start=1):
        versions[case_id] += 1
        rows.append(
            {
                "id": position,
                "event_id": str(uuid.uuid4()),
                "case_id": case_id,
                "case_version": versions[case_id],
                "event_type": "ReturnApproved",
                "payload": {},
                "occurred_at": datetime.now(UTC),
            }
        )
    with pg_app.db.begin() as conn:
        conn.execute(insert(tb.outbox), rows)
    client = broker.client(14)
    relays = [
        spawn(
            [sys.executable, "-c", LIST_RELAY_SCRIPT, pg_url, broker.url(14), f"relay-{n}"],
            tmp_path / f"relay-{n}.log",
        )
        for n in range(RELAYS)
    ]
    processes.extend(relays)
    wait_for(lambda: client.llen("ready") == RELAYS, 30, "the relays to start")

    started = time.monotonic()
    for n in range(RELAYS):
        client.rpush(f"go:relay-{n}", 1)
    assert [relay.wait(60) for relay in relays] == [0] * RELAYS
    elapsed = time.monotonic() - started

    published = [entry.decode().split(":") for entry in client.lrange("published", 0, -1)]
    ids = [int(row_id) for _, row_id in published]
    assert len(ids) == ROWS and sorted(ids) == list(range(1, ROWS + 1))  # each row exactly once
    per_case: dict[str, list[int]] = {}
    for case_id, row_id in published:
        per_case.setdefault(case_id, []).append(int(row_id))
    assert len(per_case) == OUTBOX_CASES
    assert [case for case, got in per_case.items() if got != sorted(got)] == []  # in order per case
    shares = {name.decode(): int(count) for name, count in client.hgetall("published_by").items()}
    with capsys.disabled():
        print(f"\n{RELAYS} relays moved {ROWS} outbox rows in {elapsed:.2f} s: {shares}")
    assert sum(shares.values()) == ROWS
    assert sorted(shares) == [f"relay-{n}" for n in range(RELAYS)] and min(shares.values()) > 0, shares
    assert unsent(pg_app.db) == 0
    with pg_app.db.connect() as conn:
        assert set(conn.scalars(select(o.attempts))) == {1}
