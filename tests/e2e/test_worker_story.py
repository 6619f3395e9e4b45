"""The seed family's story through real worker processes: PostgreSQL, Redis, `celery worker`,
the relay, a real SMTP server, the SMS sink and the other office's HTTP receiver."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from sqlalchemy import func, insert, select, update

from config.celery import MAX_ATTEMPTS, celery_config
from tests.integration.processes import RedisServer
from tests.servers import Inbox, Receiver, http_receiver, smtp_server
from tests.support import advance_to
from workers import relay
from workflow.adapters import tables as tb
from workflow.adapters.channels.webhook import verify_signature
from workflow.adapters.clock import SystemClock
from workflow.bootstrap import App
from workflow.demo import HOUSEHOLD, TLL_CASEWORKER, run_story
from workflow.domain.effects import NOTIFY_FAMILY, NOTIFY_OFFICE
from workflow.domain.errors import GuardFailed
from workflow.service_layer.effects import runnable_effects

pytestmark = pytest.mark.postgres
ROOT = Path(__file__).resolve().parents[2]
SECRET = "handover-secret-shared-between-tallinn-and-kyiv"
OFFICE_EMAIL = {"tallinn": "tallinn-office@avrr.example.org", "kyiv": "kyiv-office@avrr.example.org"}


class Pipeline:
    def __init__(self, app: App, inbox: Inbox, receiver: Receiver, sink: Path, env: dict[str, str]) -> None:
        self.app, self.inbox, self.receiver, self.sink, self.env = app, inbox, receiver, sink, env

    def sms(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.sink.read_text().splitlines()] if self.sink.exists() else []

    def jobs(self, status: str | None = None) -> list[tuple[str, str, int]]:
        j = tb.jobs.c
        query = select(j.event_id, j.effect, j.attempts)
        if status:
            query = query.where(j.status == status)
        with self.app.db.connect() as conn:
            return [tuple(row) for row in conn.execute(query)]  # type: ignore[misc]

    def expected_jobs(self, case_id: str) -> set[tuple[str, str]]:
        o = tb.outbox.c
        with self.app.db.connect() as conn:
            events = conn.execute(select(o.event_id, o.event_type).where(o.case_id == case_id)).all()
        return {(e.event_id, fx.name) for e in events for fx in runnable_effects(e.event_type)}


def wait_for(condition: Callable[[], bool], timeout: float = 90.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def broker(redis_server: RedisServer) -> str:
    return redis_server.url()


@pytest.fixture
def pipeline(pg_app: App, pg_url: str, broker: str, tmp_path: Path) -> Iterator[Pipeline]:
    with pg_app.db.begin() as conn:
        for code, address in OFFICE_EMAIL.items():
            conn.execute(update(tb.offices).where(tb.offices.c.code == code).values(email=address))
    with smtp_server() as (smtp, inbox), http_receiver("/handover") as receiver:
        with pg_app.db.begin() as conn:  # Kyiv runs its own deployment: the package goes over HTTP
            conn.execute(
                update(tb.offices).where(tb.offices.c.code == "kyiv").values(webhook_url=receiver.url)
            )
        sink = tmp_path / "sms.jsonl"
        env = os.environ | {
            "AVRR_ENVIRONMENT": "test",
            "AVRR_SECRET_KEY": "test-secret-key-of-at-least-32-characters",
            "AVRR_DATABASE_URL": pg_url,
            "AVRR_BROKER_URL": broker,
            "AVRR_SMTP_HOST": "127.0.0.1",
            "AVRR_SMTP_PORT": str(smtp.port),
            "AVRR_SMS_SINK": str(sink),
            "AVRR_HANDOVER_SECRET": SECRET,
            "AVRR_LOG_LEVEL": "WARNING",
        }
        log = (tmp_path / "worker.log").open("wb")
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-c", "2", "-l", "warning"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        celery = Celery("avrr-test-relay")
        celery.conf.update(celery_config(broker))
        stop = threading.Event()
        thread = threading.Thread(target=relay.run, args=(pg_app.db, celery, stop, 0.2), daemon=True)
        thread.start()
        try:
            yield Pipeline(pg_app, inbox, receiver, sink, env)
        finally:
            stop.set()
            thread.join(10)
            worker.terminate()
            worker.wait(30)
            log.close()


def test_the_seed_story_reaches_every_family_member_office_and_the_other_deployment_once(
    pipeline: Pipeline,
) -> None:
    app = pipeline.app
    results = list(run_story(app.transitions, app.views.case))
    case_id = results[0].case_id
    expected = pipeline.expected_jobs(case_id)

    wait_for(lambda: len(pipeline.jobs("done")) == len(expected), what="every job done")
    time.sleep(1.0)  # anything sent twice would have arrived by now

    assert {(e, fx) for e, fx, _ in pipeline.jobs()} == expected
    assert pipeline.jobs("dead") == [] and pipeline.jobs("running") == []
    family = [fx for _, fx in expected if fx.startswith(NOTIFY_FAMILY)]
    offices = [fx for _, fx in expected if fx.startswith(NOTIFY_OFFICE)]
    mails = pipeline.inbox.received()
    principal = HOUSEHOLD[0]
    assert len([m for m in mails if m["To"] == principal["email"]]) == len(family)
    assert len([m for m in mails if m["To"] in OFFICE_EMAIL.values()]) == len(offices)
    assert len({m["Message-ID"] for m in mails}) == len(mails)
    sms = pipeline.sms()
    assert len(sms) == len(family) and {s["to"] for s in sms} == {principal["phone"]}
    assert {s["language"] for s in sms} == {"uk"}

    (handover,) = pipeline.receiver.requests
    headers = {k.lower(): v for k, v in handover.headers.items()}
    verify_signature(
        SECRET,
        headers["x-avrr-timestamp"],
        handover.body,
        headers["x-avrr-signature"],
        SystemClock().now(),
        key=headers["idempotency-key"],
    )
    assert json.loads(handover.body)["case_id"] == case_id

    with app.db.connect() as conn:
        tasks = sorted(conn.scalars(select(tb.tasks.c.kind).where(tb.tasks.c.case_id == case_id)))
        timers = set(conn.scalars(select(tb.timers.c.name).where(tb.timers.c.case_id == case_id)))
        unsent = conn.scalar(select(func.count()).where(tb.outbox.c.sent_at.is_(None)))
    assert {"request_travel_documents", "pre_arrival_notice"} <= set(tasks)
    # Kyiv is served by another deployment here (its webhook): the booking asks no airport
    # reception of it in this database, where none of Kyiv's staff would see it.
    assert "airport_reception" not in tasks
    assert {"reintegration_counselling", "monitoring_visit"} <= set(tasks)
    made_here = [fx for _, fx in expected if fx.startswith("create_task") and "airport_reception" not in fx]
    assert len(tasks) == len(made_here)
    assert {"handover_acknowledgement", "returnee_contact", "plan_drafting", "monitoring_visit"} <= timers
    assert unsent == 0


def test_a_rolled_back_transition_sends_nothing(pipeline: Pipeline) -> None:
    app = pipeline.app
    case_id = advance_to(app, "inquiry")
    wait_for(lambda: len(pipeline.jobs("done")) == len(pipeline.expected_jobs(case_id)), what="registration")
    before = (len(pipeline.inbox.received()), len(pipeline.sms()), len(pipeline.jobs()))

    with pytest.raises(GuardFailed):  # refused by a guard: nothing is written
        app.transitions.fire(case_id, "submit_application", TLL_CASEWORKER, {})
    with pytest.raises(RuntimeError), app.db.begin() as conn:  # written, then rolled back
        conn.execute(
            insert(tb.outbox),
            {
                "event_id": "00000000-0000-4000-8000-000000000001",
                "case_id": case_id,
                "case_version": 99,
                "event_type": "ReturnApproved",
                "payload": {},
                "occurred_at": SystemClock().now(),
            },
        )
        raise RuntimeError("the transaction fails after writing its outbox row")
    marker = advance_to(app, "inquiry")  # a committed transition after both, as a marker
    wait_for(
        lambda: len(pipeline.jobs("done")) == before[2] + len(pipeline.expected_jobs(marker)), what="marker"
    )
    time.sleep(1.0)

    assert len(pipeline.jobs()) == before[2] + len(pipeline.expected_jobs(marker))
    assert len(pipeline.inbox.received()) == before[0] + 1  # the marker's registration e-mail only
    assert len(pipeline.sms()) == before[1] + 1
    with app.db.connect() as conn:
        assert conn.scalar(select(func.count()).where(tb.outbox.c.case_id == case_id)) == 1


def test_a_handler_that_keeps_failing_is_dead_lettered_and_replay_delivers_it_once(
    pipeline: Pipeline,
) -> None:
    app = pipeline.app
    pipeline.inbox.rcpt_reply = "451 4.3.0 mailbox temporarily unavailable"  # every e-mail fails
    case_id = advance_to(app, "inquiry")
    (job,) = pipeline.expected_jobs(case_id)

    wait_for(lambda: len(pipeline.jobs("dead")) == 1, timeout=120, what="the dead letter")
    with app.db.connect() as conn:
        letter = conn.execute(select(tb.dead_letters)).one()
    assert (letter.event_id, letter.effect, letter.attempts) == (*job, MAX_ATTEMPTS)
    assert letter.error.startswith("TransientDeliveryError") and HOUSEHOLD[0]["email"] not in letter.error
    assert pipeline.inbox.received() == []
    assert len(pipeline.sms()) == 1  # the SMS went out on the first attempt, and only then

    pipeline.inbox.rcpt_reply = None  # the fault is fixed
    listed = subprocess.run(
        [sys.executable, "-m", "workflow", "ops", "dead-letters", "--json"],
        cwd=ROOT,
        env=pipeline.env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert [d["effect"] for d in json.loads(listed.stdout)] == [job[1]]
    replay = subprocess.run(
        [sys.executable, "-m", "workflow", "ops", "replay", "--all"],
        cwd=ROOT,
        env=pipeline.env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "replayed 1 job(s)" in replay.stdout

    wait_for(lambda: len(pipeline.jobs("done")) == 1, what="the replayed job")
    time.sleep(1.0)
    assert len(pipeline.inbox.received()) == 1
    assert len(pipeline.sms()) == 1
    with app.db.connect() as conn:
        assert conn.scalar(select(tb.dead_letters.c.replayed_at)) is not None
