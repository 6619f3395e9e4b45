"""Two deployments hand the seed family's case over to each other over HTTP.

Tallinn's deployment and Kyiv's, each with its own PostgreSQL database, its API served by
uvicorn on loopback, its own Celery worker process, outbox relay, Redis database and SMTP sink.
Each knows the other office by the URL of the other's /handover/inbound. Tallinn walks the
family to the handover; its workers post the package; Kyiv's staff accept it over HTTP; Kyiv's
workers post the decision back, and Tallinn's case moves on as Kyiv's automation accepted it.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from config.settings import Settings
from tests.conftest import POSTGRES_ADMIN_URL, REQUIRE_SERVICES
from tests.integration.processes import Popen, start_api, start_relay, start_worker, stop, wait_for
from tests.servers import Inbox, free_port, smtp_server
from tests.support import advance_to
from workflow.adapters import tables as tb
from workflow.adapters.channels.webhook import sign
from workflow.adapters.clock import SystemClock
from workflow.adapters.db import make_engine
from workflow.adapters.migrate import upgrade
from workflow.adapters.notices import SqlFacts
from workflow.adapters.tokens import SqlTokens
from workflow.adapters.views import ensure_office
from workflow.bootstrap import App, bootstrap
from workflow.domain.actors import Role
from workflow.service_layer.effects import Job, runnable_effects
from workflow.service_layer.notifications import idempotency_key

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
REDIS = os.environ.get("AVRR_TEST_REDIS_URL", "redis://127.0.0.1:6379")
SECRET = "handover-secret-shared-by-the-tallinn-and-kyiv-deployments"
EMAIL = {"tallinn": "tallinn-office@avrr.example.org", "kyiv": "kyiv-office@avrr.example.org"}
OFFICES = {"tallinn": ("IOM Tallinn", "EE"), "kyiv": ("IOM Kyiv", "UA")}


@dataclass
class Deployment:
    """One deployment: its database, its API over HTTP, its workers and what they sent."""

    office: str
    app: App
    url: str
    inbox: Inbox
    processes: list[Popen] = field(default_factory=list)

    @property
    def inbound(self) -> str:
        return f"{self.url}/handover/inbound"

    def token(self, role: Role = Role.CASEWORKER) -> dict[str, str]:
        issued, _ = SqlTokens(self.app.db).create(
            "e2e", f"{self.office}-{role.value}", self.office, [role], timedelta(days=1), SystemClock().now()
        )
        return {"Authorization": f"Bearer {issued}"}

    def scalar(self, query: Any) -> Any:
        with self.app.db.connect() as conn:
            return conn.scalar(query)

    def rows(self, query: Any) -> list[Any]:
        with self.app.db.connect() as conn:
            return list(conn.execute(query))

    def jobs_settled(self) -> bool:
        """Every effect of every committed event has run to the end (done or dead)."""
        o, j = tb.outbox.c, tb.jobs.c
        events = self.rows(select(o.event_id, o.event_type))
        expected = {(e.event_id, fx.name) for e in events for fx in runnable_effects(e.event_type)}
        finished = {
            (r.event_id, r.effect)
            for r in self.rows(select(j.event_id, j.effect).where(j.status != "running"))
        }
        return expected <= finished

    def jobs(self, status: str) -> list[Any]:
        j = tb.jobs.c
        return self.rows(select(j.event_type, j.effect, j.last_error).where(j.status == status))


@pytest.fixture
def second_database(worker_id: str) -> Iterator[str]:
    """A private PostgreSQL database for the second deployment, migrated like the first."""
    name = f"avrr_test_{worker_id}_{uuid.uuid4().hex[:8]}_kyiv"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        upgrade(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _broker(db: int) -> str:
    url = f"{REDIS}/{db}"
    try:
        redis.Redis.from_url(url).flushdb()
    except redis.ConnectionError as exc:
        (pytest.fail if REQUIRE_SERVICES else pytest.skip)(f"Redis at {url} unreachable: {exc}")
    return url


@contextmanager
def _deploy(
    office: str, other: str, ports: dict[str, int], database_url: str, redis_db: int, tmp: Path
) -> Iterator[Deployment]:
    engine = make_engine(database_url, pool_size=5)
    settings = Settings(database_url=database_url, environment="test", secret_key="x" * 40)
    app = bootstrap(settings, clock=SystemClock(), db=engine)
    for code in (office, other):
        webhook = f"http://127.0.0.1:{ports[code]}/handover/inbound" if code == other else None
        # Each deployment mails only its own office's staff; the other office hears by webhook.
        ensure_office(
            app.db, code, *OFFICES[code], webhook_url=webhook, email=EMAIL[code] if code == office else None
        )
    broker = _broker(redis_db)
    with smtp_server() as (smtp, inbox):
        env = {
            "AVRR_ENVIRONMENT": "test",
            "AVRR_SECRET_KEY": "test-secret-key-of-at-least-32-characters",
            "AVRR_DATABASE_URL": database_url,
            "AVRR_BROKER_URL": broker,
            "AVRR_SMTP_HOST": "127.0.0.1",
            "AVRR_SMTP_PORT": str(smtp.port),
            "AVRR_SMS_SINK": str(tmp / f"{office}-sms.jsonl"),
            "AVRR_HANDOVER_SECRET": SECRET,
            "AVRR_LOG_LEVEL": "WARNING",
        }
        deployment = Deployment(office, app, f"http://127.0.0.1:{ports[office]}", inbox)
        try:
            deployment.processes.append(start_api(env, ports[office], tmp / f"{office}-api.log"))
            deployment.processes.append(
                start_worker(database_url, broker, tmp / f"{office}-worker.log", env=env)
            )
            deployment.processes.append(start_relay(database_url, broker, tmp / f"{office}-relay.log"))
            yield deployment
        finally:
            for proc in reversed(deployment.processes):
                stop(proc)
            engine.dispose()


@pytest.fixture
def deployments(pg_url: str, second_database: str, tmp_path: Path) -> Iterator[tuple[Deployment, Deployment]]:
    ports = {"tallinn": free_port(), "kyiv": free_port()}
    with ExitStack() as running:
        tallinn = running.enter_context(_deploy("tallinn", "kyiv", ports, pg_url, 8, tmp_path))
        kyiv = running.enter_context(_deploy("kyiv", "tallinn", ports, second_database, 9, tmp_path))
        yield tallinn, kyiv


def test_the_seed_familys_case_is_handed_over_between_two_deployments_and_accepted(
    deployments: tuple[Deployment, Deployment], tmp_path: Path
) -> None:
    tallinn, kyiv = deployments
    c = tb.cases.c

    # Tallinn walks the family to the handover; its workers post the package to Kyiv.
    case_id = advance_to(tallinn.app, "handover_pending")
    wait_for(
        lambda: kyiv.scalar(select(c.state).where(c.id == case_id)) == "handover_pending",
        90,
        "the case to open in Kyiv's deployment",
    )

    # The package again, as a worker that died after sending would send it: same key, same body.
    o = tb.outbox.c
    event_id = tallinn.scalar(select(o.event_id).where(o.case_id == case_id, o.event_type == "HandoverSent"))
    (effect,) = runnable_effects("HandoverSent")
    job = Job(event_id, "HandoverSent", case_id, effect.name)
    body = json.dumps(SqlFacts(tallinn.app.db).handover_package(job), sort_keys=True, default=str).encode()
    key = idempotency_key(event_id, effect.name)
    timestamp = str(int(SystemClock().now().timestamp()))
    again = httpx.post(
        kyiv.inbound,
        content=body,
        headers={
            "Content-Type": "application/json",
            "X-AVRR-Timestamp": timestamp,
            "X-AVRR-Signature": sign(SECRET, timestamp, body, key),
            "Idempotency-Key": key,
            "X-AVRR-Event": "HandoverSent",
        },
        timeout=30,
    )
    assert again.status_code == 200 and again.headers["idempotency-replayed"] == "true", again.text
    assert again.json()["case_id"] == case_id and again.json()["kind"] == "handover_package"

    d = tb.inbound_deliveries.c
    assert kyiv.rows(select(d.idempotency_key, d.kind, d.from_office)) == [
        (key, "handover_package", "tallinn")
    ]
    assert kyiv.scalar(select(func.count()).select_from(tb.cases)) == 1
    h = tb.case_history.c
    assert kyiv.rows(select(h.trigger, h.actor_id).where(h.case_id == case_id)) == [
        ("receive_handover", "system:handover:tallinn")
    ]

    # Kyiv's caseworker sees the case and accepts it over HTTP.
    with httpx.Client(base_url=kyiv.url, timeout=30) as http:
        staff = kyiv.token()
        case = http.get(f"/cases/{case_id}", headers=staff)
        assert case.status_code == 200, case.text
        assert set(case.json()["triggers"]) == {"accept_handover", "refuse_handover"}
        accepted = http.post(
            f"/cases/{case_id}/transitions/accept_handover",
            headers={**staff, "If-Match": case.headers["etag"], "Idempotency-Key": f"accept-{case_id}"},
        )
        assert accepted.status_code == 200, accepted.text
        assert accepted.json()["to_state"] == "handed_over"

    # Kyiv's workers post the decision back; Tallinn's case moves as Kyiv's automation accepted it.
    wait_for(
        lambda: tallinn.scalar(select(c.state).where(c.id == case_id)) == "handed_over",
        90,
        "the acceptance to reach Tallinn's deployment",
    )
    with httpx.Client(base_url=tallinn.url, timeout=30) as http:
        history = http.get(f"/cases/{case_id}/history", headers=tallinn.token()).json()
    assert [(e["trigger"], e["actor_id"]) for e in history[-2:]] == [
        ("send_handover", "tll-caseworker"),
        ("accept_handover", "system:handover:kyiv"),
    ]
    assert tallinn.scalar(select(c.owner_office).where(c.id == case_id)) == "kyiv"
    assert tallinn.rows(select(d.kind, d.case_id, d.from_office)) == [("handover_decision", case_id, "kyiv")]

    # Every job on both sides ran, none failed; each side's staff heard what concerns them.
    wait_for(lambda: tallinn.jobs_settled() and kyiv.jobs_settled(), 90, "every job on both sides")
    assert tallinn.jobs("dead") == [] and kyiv.jobs("dead") == []
    assert (
        len(kyiv.rows(select(d.idempotency_key))) == 1 and len(tallinn.rows(select(d.idempotency_key))) == 1
    )
    ref = f"C-{case_id[:8].upper()}"
    kyiv_mail = [m["Subject"] for m in kyiv.inbox.received() if m["To"] == EMAIL["kyiv"]]
    assert len(kyiv_mail) == 1 and ref in kyiv_mail[0]  # the package arrived: in Ukrainian
    assert not [m for m in kyiv.inbox.received() if m["To"] == EMAIL["tallinn"]]
    # Tallinn's staff get their own side's notices, the acceptance among them, from their own
    # deployment only; notices for Kyiv's side have no address there.
    origin_notices = [
        e for _, e, _ in tallinn.jobs("done") if e.startswith("notify_office:") and e.endswith(":origin")
    ]
    tallinn_mail = [m["Subject"] for m in tallinn.inbox.received() if m["To"] == EMAIL["tallinn"]]
    assert "notify_office:handover_accepted:origin" in origin_notices
    assert len(tallinn_mail) == len(origin_notices)
    t = tb.tasks.c
    assert kyiv.rows(select(t.kind, t.office).where(t.case_id == case_id)) == [
        ("reintegration_counselling", "kyiv")
    ]
    # Both copies fired accept_handover. The family hears of it once, from Kyiv's deployment,
    # which owns the case now; Tallinn's copy leaves the family and Kyiv's task to Kyiv's.
    assert tallinn.rows(select(t.kind).where(t.kind == "reintegration_counselling")) == []
    # Nor did Tallinn's booking leave Kyiv an airport-reception task in Tallinn's database, where
    # none of Kyiv's staff would see it: Kyiv heard of the journey by e-mail.
    assert tallinn.rows(select(t.kind).where(t.office == "kyiv")) == []
    assert ("pre_arrival_notice",) in tallinn.rows(select(t.kind).where(t.office == "tallinn"))
    family = "notify_family:handover_accepted:origin"
    sent = tb.deliveries.c
    assert sorted(kyiv.rows(select(sent.channel).where(sent.effect == family))) == [("email",), ("sms",)]
    assert tallinn.rows(select(sent.channel).where(sent.effect == family)) == []
    texts = {
        office: [
            line
            for line in (tmp_path / f"{office}-sms.jsonl").read_text().splitlines()
            if json.loads(line)["idempotency_key"].endswith(family)
        ]
        for office in ("tallinn", "kyiv")
    }
    assert (len(texts["tallinn"]), len(texts["kyiv"])) == (0, 1)
    timers = tb.timers.c
    assert tallinn.rows(select(timers.name).where(timers.case_id == case_id, timers.status == "pending")) == [
        ("returnee_contact",)
    ]
