"""WorkerWatch against a private redis-server and real `celery worker` processes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from celery import Celery
from kombu.exceptions import OperationalError

from config.celery import celery_config
from tests.integration.processes import RedisServer, start_worker, stop, wait_for, wait_for_pool
from workflow.adapters.worker_watch import WorkerInfo, WorkerWatch, _active_job, _active_jobs


def client(broker_url: str) -> Celery:
    app = Celery("avrr-test-watch")
    app.conf.update(celery_config(broker_url))
    return app


def test_each_worker_online_with_its_queue_pool_and_processes(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    db_url = f"sqlite:///{tmp_path}/unused.sqlite3"  # no-op tasks touch no database
    watch = WorkerWatch(client(redis_server.url()))
    assert watch.workers() == []

    first = start_worker(db_url, redis_server.url(), tmp_path / "w1.log", concurrency=2)
    second = start_worker(db_url, redis_server.url(), tmp_path / "w2.log", concurrency=1)
    try:
        pids = {first.pid: wait_for_pool(first, 2), second.pid: wait_for_pool(second, 1)}

        def two() -> list[WorkerInfo]:
            online = watch.workers()
            return online if len(online) == 2 else []

        workers = wait_for(two, 30, "two workers")
        by_pool = {tuple(sorted(w.pids)): w for w in workers}
        assert set(by_pool) == {tuple(sorted(p)) for p in pids.values()}
        for worker in workers:
            assert worker.queues == ["avrr"]
            assert worker.pool == "prefork"
            assert worker.concurrency == len(worker.pids)
            assert worker.name.startswith("test-")

        sender = client(redis_server.url())
        for n in range(5):
            sender.send_task("avrr.noop", args=[n], queue="avrr")

        def processed() -> int | None:
            total = sum(w.processed.get("avrr.noop", 0) for w in watch.workers())
            return total if total == 5 else None

        assert wait_for(processed, 30, "five no-ops counted") == 5
    finally:
        stop(first)
        stop(second)
    assert wait_for(lambda: watch.workers() == [] or None, 30, "no worker online")


def test_an_unreachable_broker_fails_fast(redis_server: RedisServer) -> None:
    url = redis_server.url()
    redis_server.stop()
    started = time.monotonic()
    with pytest.raises(OperationalError):
        WorkerWatch(client(url)).workers()
    assert time.monotonic() - started < 3


def test_an_effect_job_shows_its_ids_only() -> None:
    job = _active_job(
        {
            "id": "task-1",
            "name": "avrr.effects.run",
            "args": ["event-1", "HandoverSent", "case-1", "notify_office"],
            "kwargs": {"occurred_at": "2026-11-28T09:00:00+00:00"},
            "time_start": 1_795_000_000.5,
            "worker_pid": 42,
        }
    )
    assert (job.task, job.effect, job.case_id, job.event_id, job.worker_pid) == (
        "avrr.effects.run",
        "notify_office",
        "case-1",
        "event-1",
        42,
    )
    assert job.started_at is not None and job.started_at.timestamp() == 1_795_000_000.5
    event = _active_job(
        {"name": "avrr.events.handle", "args": ["event-2", "TravelRebooked", "case-2"], "time_start": None}
    )
    assert (event.effect, event.event_type, event.case_id, event.event_id) == (
        None,
        "TravelRebooked",
        "case-2",
        "event-2",
    )
    other = _active_job({"name": "avrr.timers.fire_due", "args": [], "time_start": None})
    assert (other.effect, other.event_type, other.case_id, other.started_at) == (None, None, None, None)


def test_a_several_events_message_shows_each_of_its_events() -> None:
    request = {
        "name": "avrr.events.handle_many",
        "args": [
            ["event-1", "InquiryRegistered", "case-1", None],
            ["event-2", "TravelRebooked", "case-1", None],
        ],
        "time_start": 1_795_000_000.0,
        "worker_pid": 7,
    }
    jobs = _active_jobs(request)
    assert [(j.task, j.event_id, j.event_type, j.case_id, j.worker_pid) for j in jobs] == [
        ("avrr.events.handle_many", "event-1", "InquiryRegistered", "case-1", 7),
        ("avrr.events.handle_many", "event-2", "TravelRebooked", "case-1", 7),
    ]
    assert _active_jobs({"name": "avrr.events.handle_many", "args": []})[0].event_id is None
    single = _active_jobs({"name": "avrr.events.handle", "args": ["e", "T", "c"]})
    assert [j.event_id for j in single] == ["e"]
