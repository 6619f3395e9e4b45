"""The ops routes on SQLite and PostgreSQL: the overview, replaying a dead letter onto a real
Redis, a case's timeline, the dashboard page; 401 without a token, 403 for every other role."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from sqlalchemy import func, select

from tests.api.conftest import api_client, bearer, token_for
from tests.integration.processes import RedisServer, free_port, queued_jobs, wait_for
from tests.support import advance_to
from workflow.adapters import tables as tb
from workflow.adapters.jobs import SqlDeadLetters, SqlJobStore
from workflow.adapters.worker_watch import WorkerInfo
from workflow.api.routes import ops
from workflow.bootstrap import App
from workflow.demo import HOUSEHOLD
from workflow.domain.actors import Role
from workflow.service_layer.effects import Job, runnable_effects

ERROR = "PermanentDeliveryError: recipient refused (550 5.1.1 no such mailbox)"
ROUTES = [
    ("GET", "/ops/overview"),
    ("POST", "/ops/dead-letters/1/replay"),
    ("GET", "/ops/cases/{case_id}/timeline"),
]


@pytest.fixture
def broker(redis_server: RedisServer) -> RedisServer:
    return redis_server


@pytest.fixture
def ops_api(app: App, broker: RedisServer) -> Iterator[TestClient]:
    with api_client(app, broker_url=broker.url()) as client:
        yield client


def ops_token(app: App) -> dict[str, str]:
    # Kyiv's ops person: ops see every office's cases, the test's are Tallinn's.
    return bearer(token_for(app, "ops-anna", "kyiv", Role.OPS))


def dead_letter(app: App, case_id: str) -> tuple[int, Job]:
    """The first job of the case's latest event, run once and dead-lettered as a refused
    recipient would have it (what the Celery task's on_failure does)."""
    o = tb.outbox.c
    with app.db.connect() as conn:
        event_id, event_type = conn.execute(
            select(o.event_id, o.event_type).where(o.case_id == case_id).order_by(o.id.desc()).limit(1)
        ).one()
    job = Job(event_id, event_type, case_id, runnable_effects(event_type)[0].name)
    store = SqlJobStore(app.db)
    store.start(job, app.clock.now())
    store.dead_letter(job, ERROR, app.clock.now())
    (letter,) = [d for d in SqlDeadLetters(app.db).open() if d.event_id == event_id]
    return letter.id, job


def access(app: App, action: str) -> list[tuple[str | None, str | None, str]]:
    a = tb.access_log.c
    with app.db.connect() as conn:
        return [
            tuple(r) for r in conn.execute(select(a.actor_id, a.case_id, a.outcome).where(a.action == action))
        ]


def access_rows(app: App) -> int:
    with app.db.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(tb.access_log)) or 0)


# -- the overview -----------------------------------------------------------------------------


def test_overview_shows_ops_the_dead_letter_the_counts_and_the_jobs(app: App, ops_api: TestClient) -> None:
    case_id = advance_to(app, "return_approved")
    other = advance_to(app, "application_submitted")
    letter_id, job = dead_letter(app, case_id)

    # The first request waits WORKERS_WAIT (1.5 s) for the broker's answer to its ping, which
    # takes about 1 s and more on a busy machine: ask until the answer is in.
    def answered() -> Any:
        reply = ops_api.get("/ops/overview", headers=ops_token(app))
        return reply if reply.status_code != 200 or reply.json()["workers"]["asked_at"] else None

    response = wait_for(answered, 15, "the workers' answer in the overview")

    assert response.status_code == 200, response.text
    body = response.json()
    status = body["status"]
    assert status["dead_letters_open"] == 1
    assert status["outbox_backlog"] > 0  # no relay runs in this test: every event waits
    counts = {(c["state"], c["office"]): c["count"] for c in status["cases_by_state"]}
    assert counts == {("return_approved", "tallinn"): 1, ("application_submitted", "tallinn"): 1}
    (letter,) = body["dead_letters"]
    assert letter["id"] == letter_id
    assert (letter["case_id"], letter["effect"], letter["error"], letter["attempts"]) == (
        case_id,
        job.effect,
        ERROR,
        1,
    )
    (run,) = body["recent_jobs"]
    assert (run["event_id"], run["effect"], run["status"], run["last_error"]) == (
        job.event_id,
        job.effect,
        "dead",
        ERROR,
    )
    # The broker answered (a private redis-server) and no worker listens on it.
    assert body["workers"]["error"] is None and body["workers"]["workers"] == []
    assert body["workers"]["asked_at"] is not None
    assert body["stuck_cases"] == [] and body["overdue_timers"] == []
    assert other not in json.dumps(body["dead_letters"])
    for member in HOUSEHOLD:  # ids, states, offices, times, effects and errors only
        assert member["full_name"] not in response.text
        assert member["date_of_birth"] not in response.text


def test_overview_lists_a_case_idle_longer_than_its_state_allows(app: App, ops_api: TestClient) -> None:
    case_id = advance_to(app, "application_submitted")  # application_submitted allows 14 days
    app.clock.advance(days=15)  # type: ignore[attr-defined]

    body = ops_api.get("/ops/overview", headers=ops_token(app)).json()

    assert body["status"]["stuck_cases"] == 1
    (stuck,) = body["stuck_cases"]
    assert (stuck["case_id"], stuck["state"], stuck["owner_office"]) == (
        case_id,
        "application_submitted",
        "tallinn",
    )
    assert stuck["idle_s"] == pytest.approx(15 * 86400)
    assert stuck["allowed_s"] == 14 * 86400


def broker_down(client: TestClient, app: App) -> None:
    """The ops routes' broker on a port nothing listens on (the rate limiter keeps its Redis)."""
    client.app.state.ops_broker = ops.Broker.on(f"redis://127.0.0.1:{free_port()}/0", app.clock.now)  # type: ignore[attr-defined]


def test_overview_says_when_the_broker_does_not_answer(app: App, ops_api: TestClient) -> None:
    broker_down(ops_api, app)
    body = ops_api.get("/ops/overview", headers=ops_token(app)).json()
    assert body["workers"]["workers"] == []
    assert body["workers"]["error"].startswith("the broker did not answer")


# -- replaying a dead letter ------------------------------------------------------------------


def test_replay_requeues_the_job_on_the_broker_once(
    app: App, ops_api: TestClient, broker: RedisServer
) -> None:
    case_id = advance_to(app, "return_approved")
    letter_id, job = dead_letter(app, case_id)
    token = ops_token(app)

    response = ops_api.post(f"/ops/dead-letters/{letter_id}/replay", headers=token)

    assert response.status_code == 202, response.text
    assert response.json() == {
        "dead_letter_id": letter_id,
        "event_id": job.event_id,
        "event_type": job.event_type,
        "case_id": case_id,
        "effect": job.effect,
    }
    assert queued_jobs(broker.client()) == [(job.event_id, job.event_type, case_id, job.effect)]
    assert SqlDeadLetters(app.db).open() == []
    with app.db.connect() as conn:
        j = tb.jobs.c
        assert conn.execute(select(j.status, j.attempts).where(j.event_id == job.event_id)).one() == (
            "pending",
            0,
        )
    assert access(app, "replay_dead_letter") == [("ops-anna", case_id, "ok")]

    again = ops_api.post(f"/ops/dead-letters/{letter_id}/replay", headers=token)
    assert again.status_code == 404
    assert again.headers["content-type"] == "application/problem+json"
    assert again.json()["type"] == "/problems/not_found"
    assert len(queued_jobs(broker.client())) == 1  # published once


def test_replay_of_an_unknown_dead_letter_is_404(app: App, ops_api: TestClient, broker: RedisServer) -> None:
    response = ops_api.post("/ops/dead-letters/424242/replay", headers=ops_token(app))
    assert response.status_code == 404
    assert response.json()["detail"] == "no open dead letter with id 424242"
    assert queued_jobs(broker.client()) == []


def test_replay_while_the_broker_is_down_is_503_and_leaves_the_dead_letter_open(
    app: App, ops_api: TestClient
) -> None:
    letter_id, _ = dead_letter(app, advance_to(app, "return_approved"))
    broker_down(ops_api, app)
    started = time.monotonic()
    response = ops_api.post(f"/ops/dead-letters/{letter_id}/replay", headers=ops_token(app))
    assert response.status_code == 503, response.text
    assert response.json()["type"] == "/problems/broker_unavailable"
    assert time.monotonic() - started < 15
    assert [d.id for d in SqlDeadLetters(app.db).open()] == [letter_id]


# -- a case's timeline ------------------------------------------------------------------------


def test_timeline_of_another_offices_case_shows_history_events_jobs_and_timers(
    app: App, ops_api: TestClient
) -> None:
    case_id = advance_to(app, "handover_pending")
    dead_letter(app, case_id)
    token = ops_token(app)
    logged_before = access_rows(app)

    response = ops_api.get(f"/ops/cases/{case_id}/timeline", headers=token)

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["case_id"], body["state"], body["origin_office"], body["destination_office"]) == (
        case_id,
        "handover_pending",
        "tallinn",
        "kyiv",
    )
    assert [s["version"] for s in body["history"]] == list(range(1, body["version"] + 1))
    assert (
        body["history"][0]["trigger"] == "register_inquiry"
        and body["history"][-1]["to_state"] == "handover_pending"
    )
    with app.db.connect() as conn:
        o = tb.outbox.c
        events = conn.scalar(select(func.count()).select_from(tb.outbox).where(o.case_id == case_id))
    assert len(body["events"]) == events and all(e["sent_at"] is None for e in body["events"])
    assert [j["status"] for j in body["jobs"]] == ["dead"]
    assert any(t["status"] == "pending" for t in body["timers"])  # the handover acknowledgement deadline
    for member in HOUSEHOLD:
        for value in (member["full_name"], member["date_of_birth"], member.get("phone"), member.get("email")):
            assert value is None or value not in response.text
    assert access_rows(app) == logged_before  # no personal data: a read is not access-logged


def test_timeline_of_an_unknown_case_is_404(app: App, ops_api: TestClient) -> None:
    response = ops_api.get("/ops/cases/no-such-case/timeline", headers=ops_token(app))
    assert response.status_code == 404
    assert response.json()["type"] == "/problems/unknown_case"


# -- who may ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_ops_route_needs_a_token(app: App, ops_api: TestClient, method: str, path: str) -> None:
    response = ops_api.request(method, path.format(case_id="x"))
    assert response.status_code == 401
    assert response.json()["type"] == "/problems/unauthenticated"


@pytest.mark.parametrize("role", [r for r in Role if r is not Role.OPS])
def test_every_other_role_is_refused_and_the_refusal_logged(
    app: App, ops_api: TestClient, role: Role
) -> None:
    case_id = advance_to(app, "application_submitted")
    letter_id, _ = dead_letter(app, case_id)
    office = None if role is Role.SYSTEM else "tallinn"  # the case's own office, even
    headers = bearer(token_for(app, f"not-ops-{role.value}", office, role))
    paths = [p.format(case_id=case_id).replace("/1/", f"/{letter_id}/") for _, p in ROUTES]

    answers = [ops_api.request(m, p, headers=headers) for (m, _), p in zip(ROUTES, paths, strict=True)]

    assert [a.status_code for a in answers] == [403, 403, 403]
    assert {a.json()["type"] for a in answers} == {"/problems/permission_denied"}
    assert [d.id for d in SqlDeadLetters(app.db).open()] == [letter_id]  # not replayed
    a = tb.access_log.c
    with app.db.connect() as conn:
        logged = conn.execute(
            select(a.action, a.case_id).where(
                a.actor_id == f"not-ops-{role.value}", a.outcome == "permission_denied"
            )
        ).all()
    assert sorted(logged) == sorted(
        [
            ("GET /ops/overview", None),
            ("POST /ops/dead-letters/{dead_letter_id}/replay", None),
            ("GET /ops/cases/{case_id}/timeline", case_id),
        ]
    )


# -- the page ---------------------------------------------------------------------------------


def test_the_dashboard_page_and_its_assets_are_served_by_the_app_under_a_strict_policy(
    app: App, ops_api: TestClient
) -> None:
    page = ops_api.get("/ops/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert 'src="dashboard.js"' in page.text and 'href="dashboard.css"' in page.text
    assets = (
        ("dashboard.js", "text/javascript"),
        ("dashboard.css", "text/css"),
        ("favicon.svg", "image/svg+xml"),
    )
    for asset, media_type in assets:
        served = ops_api.get(f"/ops/{asset}")
        assert served.status_code == 200 and served.headers["content-type"].startswith(media_type)
        assert served.headers["x-content-type-options"] == "nosniff"
        # Nothing fetched from elsewhere (the SVG namespace is a name, not a fetch).
        assert "https://" not in served.text.replace("http://www.w3.org/2000/svg", "")
        assert "http://" not in served.text.replace("http://www.w3.org/2000/svg", "")
    assert "innerHTML" not in ops_api.get("/ops/dashboard.js").text
    redirect = ops_api.get("/ops", follow_redirects=False)
    assert redirect.status_code == 308 and redirect.headers["location"] == "ops/"
    assert "/ops/" not in str(ops_api.get("/openapi.json").json()["paths"].get("/ops/", ""))


# -- the workers cache ------------------------------------------------------------------------


def test_the_workers_are_asked_once_per_interval_however_many_dashboards_poll() -> None:
    asked: list[float] = []
    release = threading.Event()

    def ask() -> list[WorkerInfo]:
        asked.append(time.monotonic())
        release.wait(5)
        return [WorkerInfo("w@host", ["avrr"], "prefork", 2, [1, 2])]

    cache = ops.WorkerCache(ask, lambda: datetime.now(UTC))
    answers: list[ops.WorkersSeen] = []
    waiters = [threading.Thread(target=lambda: answers.append(cache.get())) for _ in range(5)]
    for waiter in waiters:
        waiter.start()
    wait_for(lambda: asked, 5, "the first question")
    release.set()
    for waiter in waiters:
        waiter.join(5)
    # Nothing to show yet: the five requests waited for the one question.
    assert len(asked) == 1
    assert [[w.name for w in a.workers] for a in answers] == [["w@host"]] * 5
    for _ in range(20):  # within the interval: the same answer, no new question
        assert cache.get().workers[0].name == "w@host"
    assert len(asked) == 1


# -- the schema -------------------------------------------------------------------------------


@pytest.mark.postgres
def test_the_ops_routes_honour_their_schema_for_an_ops_caller(pg_app: App, broker: RedisServer) -> None:
    letter_id, _ = dead_letter(pg_app, advance_to(pg_app, "return_approved"))
    # Schemathesis's ignored-auth check sends an invalid token for each operation: a budget of
    # failed authentications it cannot spend (test_authorization tests the budget itself).
    with api_client(pg_app, broker_url=broker.url(), rate_limit_auth_failures="1000/minute") as client:
        schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
        headers = ops_token(pg_app)
        operations = [r.ok() for r in schema.get_all_operations() if r.ok().path.startswith("/ops/")]
        assert len(operations) == 3
        for operation in operations:

            @given(case=operation.as_strategy())
            @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def run(case: schemathesis.Case) -> None:
                # A valid id of no open dead letter answers 404 (documented), so "valid data is
                # accepted" does not hold; every other check does.
                case.call_and_validate(
                    headers=headers, excluded_checks=[schemathesis.checks.positive_data_acceptance]
                )

            run()
    assert letter_id > 0
