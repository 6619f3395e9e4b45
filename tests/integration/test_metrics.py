"""Metrics scraped from running processes (PostgreSQL, a private Redis, a real SMTP server):
`avrr serve` with two uvicorn workers and `avrr worker` with two pool processes, each adding up
its processes through a private PROMETHEUS_MULTIPROC_DIR. Transitions fired over HTTP, the outbox
backlog before and after the relay runs, jobs done, retried and dead-lettered by the SMTP server's
replies: every figure moves by what the database says happened."""

from __future__ import annotations

import os
import shutil
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from tests.api.conftest import bearer, token_for
from tests.conftest import REQUIRE_SERVICES
from tests.integration.processes import Popen, RedisServer, free_port, spawn, start_relay, stop, wait_for
from tests.scrape import Samples, delta, parse, value
from tests.servers import Inbox, smtp_server
from tests.support import REGISTRATION
from workflow.adapters import tables as tb
from workflow.bootstrap import App

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
EVENT_TASK = "avrr.events.handle"  # one task per event; this test's events have one job each
EVENTS_TASK = "avrr.events.handle_many"  # several events that reached the relay in one round
NOTICE = "notify_family:inquiry_registered:origin"  # InquiryRegistered's one job


class Running:
    def __init__(self, app: App, api: str, worker: str, node: str, inbox: Inbox, env: dict[str, str]) -> None:
        self.app, self.api, self.worker, self.node, self.inbox, self.env = app, api, worker, node, inbox, env

    def scrape_api(self) -> Samples:
        return parse(httpx.get(f"{self.api}/metrics", timeout=10).text)

    def scrape_worker(self) -> Samples:
        with urllib.request.urlopen(f"{self.worker}/metrics", timeout=10) as response:
            return parse(response.read().decode())

    def jobs(self, status: str) -> int:
        j = tb.jobs.c
        with self.app.db.connect() as conn:
            return int(conn.scalar(select(func.count()).where(j.status == status)) or 0)

    def register(self, n: int, headers: dict[str, str]) -> list[str]:
        ids = []
        for _ in range(n):  # a connection each, so both uvicorn processes take some
            with httpx.Client(base_url=self.api) as http:
                created = http.post("/cases", json=REGISTRATION, headers=headers)
            assert created.status_code == 201, created.text
            ids.append(created.json()["case_id"])
        return ids


@pytest.fixture
def running(pg_app: App, pg_url: str, tmp_path: Path) -> Iterator[Running]:
    if shutil.which("redis-server") is None:
        (pytest.fail if REQUIRE_SERVICES else pytest.skip)("redis-server is not installed")
    redis = RedisServer(tmp_path / "redis").start()
    started: list[Popen] = []
    api_port, metrics_port = free_port(), free_port()
    node = f"metrics-{os.getpid()}@test"
    with smtp_server() as (smtp, inbox):
        env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"} | {
            "AVRR_ENVIRONMENT": "test",
            "AVRR_SECRET_KEY": "test-secret-key-of-at-least-32-characters",
            "AVRR_DATABASE_URL": pg_url,
            "AVRR_BROKER_URL": redis.url(),
            "AVRR_SMTP_HOST": "127.0.0.1",
            "AVRR_SMTP_PORT": str(smtp.port),
            "AVRR_SMS_SINK": str(tmp_path / "sms.jsonl"),
            "AVRR_LOG_LEVEL": "WARNING",
        }
        avrr = [sys.executable, "-m", "workflow"]
        try:
            api = [*avrr, "serve", "--port", str(api_port), "--workers", "2", "--no-access-log"]
            started.append(spawn(api, tmp_path / "api.log", env))
            worker = [*avrr, "worker", "-c", "2", "-n", node, "--metrics-port", str(metrics_port)]
            started.append(spawn(worker, tmp_path / "worker.log", env))
            running = Running(
                pg_app, f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{metrics_port}", node, inbox, env
            )
            wait_for(lambda: _answers(f"{running.api}/health/live"), 30, "the API")
            wait_for(lambda: _answers(f"{running.worker}/metrics"), 30, "the worker's metrics")
            yield running
        finally:
            for proc in reversed(started):
                stop(proc)
            redis.stop()


def scraped_when(scrape: Callable[[], Samples], holds: Callable[[Samples], bool], what: str) -> Samples:
    """The first scrape within 10 s for which ``holds`` is true (the API caches its figures 2 s)."""
    return wait_for(lambda: next((s for s in [scrape()] if holds(s)), None), 10, what)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _tasks(before: Samples, after: Samples, name: str, **labels: str) -> float:
    """A task metric's change summed over the event tasks: one event a message, or several."""
    return sum(delta(before, after, name, task=task, **labels) for task in (EVENT_TASK, EVENTS_TASK))


def test_metrics_move_when_transitions_fire_and_jobs_fail(running: Running, tmp_path: Path) -> None:
    app = running.app
    caseworker = bearer(token_for(app, "tll-cw", "tallinn", "caseworker"))
    api_before, worker_before = running.scrape_api(), running.scrape_worker()

    # Two registrations, a refusal and an anonymous request; no relay yet: the events wait.
    first = running.register(2, caseworker)
    with httpx.Client(base_url=running.api) as http:
        refused = http.post(
            f"/cases/{first[0]}/transitions/submit_application",
            json={},
            headers={**caseworker, "If-Match": '"1"'},
        )
        anonymous = http.get(f"/cases/{first[0]}")
    assert (refused.status_code, anonymous.status_code) == (409, 401)
    waiting = scraped_when(
        running.scrape_api, lambda s: value(s, "avrr_outbox_backlog") == 2, "the backlog in /metrics"
    )
    assert delta(api_before, waiting, "avrr_transitions_total", trigger="register_inquiry", outcome="ok") == 2
    assert delta(api_before, waiting, "avrr_transitions_total", outcome="guard_failed") == 1
    assert delta(api_before, waiting, "avrr_requests_refused_total", reason="guard_failed") == 1
    assert delta(api_before, waiting, "avrr_requests_refused_total", reason="unauthenticated") == 1
    assert value(waiting, "avrr_cases", state="inquiry", office="tallinn") == 2
    assert value(waiting, "avrr_outbox_oldest_unsent_age_seconds") > 0

    # The relay hands them over; the workers send both notices.
    started = [
        start_relay(running.env["AVRR_DATABASE_URL"], running.env["AVRR_BROKER_URL"], tmp_path / "relay.log")
    ]
    try:
        wait_for(lambda: running.jobs("done") == 2, 30, "the first two jobs")
        scraped_when(running.scrape_api, lambda s: value(s, "avrr_outbox_backlog") == 0, "no backlog")

        # Two more whose e-mail the server refuses for now (4xx: retried), then for good (5xx).
        running.inbox.rcpt_reply = "451 4.3.0 try again later"
        running.register(2, caseworker)
        wait_for(
            lambda: _tasks(worker_before, running.scrape_worker(), "avrr_task_retries_total"),
            30,
            "a retry",
        )
        running.inbox.rcpt_reply = "550 5.1.1 no such mailbox"
        wait_for(lambda: running.jobs("dead") == 2, 60, "two dead letters")
    finally:
        stop(started[0])

    done, dead = running.jobs("done"), running.jobs("dead")
    assert (done, dead) == (2, 2)
    after = scraped_when(
        running.scrape_worker,
        lambda s: _tasks(worker_before, s, "avrr_task_failures_total") == dead,
        "the failures in the worker's metrics",
    )
    moved = {
        name: delta(worker_before, after, name, **labels)
        for name, labels in {
            "avrr_jobs_finished_total": {"effect": NOTICE, "outcome": "done"},
            "avrr_effect_latency_seconds_count": {"effect": NOTICE},
            "avrr_events_run_total": {"outcome": "done"},
        }.items()
    }
    assert moved == {
        "avrr_jobs_finished_total": done,
        "avrr_effect_latency_seconds_count": done,  # every job carried its event's commit time
        "avrr_events_run_total": done,  # one job an event: an event per job, packed or not
    }
    assert delta(worker_before, after, "avrr_jobs_finished_total", effect=NOTICE, outcome="dead") == dead
    assert delta(worker_before, after, "avrr_effect_latency_seconds_sum", effect=NOTICE) > 0
    # An event that failed for good filed its job: dead events, and as many task failures (the
    # retries of a packed message go on as single-event tasks, which fail).
    assert delta(worker_before, after, "avrr_events_run_total", outcome="dead") == dead
    assert _tasks(worker_before, after, "avrr_task_failures_total") == dead
    retries = _tasks(worker_before, after, "avrr_task_retries_total")
    assert retries >= 1 and delta(worker_before, after, "avrr_events_run_total", outcome="retry") == retries
    runs = {
        outcome: _tasks(worker_before, after, "avrr_task_runs_total", outcome=outcome)
        for outcome in ("success", "retry", "failure")
    }
    # Each run once: a packed message that sends a retry on ends as a success, a task that retries
    # itself as a retry; two events' messages at least.
    assert runs["failure"] == dead and runs["success"] + runs["retry"] >= 2
    assert runs["retry"] <= retries
    assert _tasks(worker_before, after, "avrr_task_duration_seconds_count") == sum(runs.values())
    heartbeat = value(after, "avrr_worker_heartbeat_timestamp_seconds", worker=running.node)
    assert time.time() - 30 < heartbeat <= time.time() + 1

    final = scraped_when(
        running.scrape_api, lambda s: value(s, "avrr_dead_letters_open") == dead, "dead letters in /metrics"
    )
    assert value(final, "avrr_cases", state="inquiry", office="tallinn") == 4
    assert delta(api_before, final, "avrr_transitions_total", trigger="register_inquiry", outcome="ok") == 4
    assert value(final, "avrr_ops_status_up") == 1
