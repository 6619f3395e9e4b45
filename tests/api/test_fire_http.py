"""Firing over real HTTP (uvicorn on loopback, PostgreSQL): idempotency keys, If-Match, ETags,
and twenty concurrent fires with the same If-Match."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import func, select

from config.settings import Settings
from tests.servers import free_port
from tests.support import advance_to
from workflow.adapters import tables as tb
from workflow.adapters.tokens import SqlTokens
from workflow.api.app import create_app
from workflow.bootstrap import App
from workflow.demo import STEPS
from workflow.domain.actors import Role

pytestmark = pytest.mark.postgres
ELIGIBILITY = next(s.payload for s in STEPS if s.trigger == "record_eligibility")
assert isinstance(ELIGIBILITY, dict)


@pytest.fixture
def server(pg_app: App) -> Iterator[str]:
    settings = Settings(database_url=str(pg_app.db.url), environment="test", secret_key="x" * 40)
    port = free_port()
    config = uvicorn.Config(create_app(pg_app, settings), host="127.0.0.1", port=port, log_level="warning")
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not running.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    running.should_exit = True
    thread.join(10)


def bearer(app: App, office: str = "tallinn", role: Role = Role.CASEWORKER) -> dict[str, str]:
    issued, _ = SqlTokens(app.db).create(
        "t", f"{office}-{role.value}", office, [role], timedelta(days=1), app.clock.now()
    )
    return {"Authorization": f"Bearer {issued}"}


def history_count(app: App, case_id: str) -> int:
    with app.db.connect() as conn:
        return conn.scalar(  # type: ignore[no-any-return]
            select(func.count()).select_from(tb.case_history).where(tb.case_history.c.case_id == case_id)
        )


def test_the_same_idempotency_key_twice_answers_the_same_and_fires_once(pg_app: App, server: str) -> None:
    case_id = advance_to(pg_app, "inquiry")
    headers = {**bearer(pg_app), "If-Match": '"1"', "Idempotency-Key": "eligibility-1"}
    url = f"{server}/cases/{case_id}/transitions/record_eligibility"
    with httpx.Client() as http:
        first = http.post(url, json=ELIGIBILITY, headers=headers)
        second = http.post(url, json=ELIGIBILITY, headers=headers)
        other = http.post(url, json={**ELIGIBILITY, "nationality": "MD"}, headers=headers)
        case = http.get(f"{server}/cases/{case_id}", headers=bearer(pg_app))

    assert first.status_code == second.status_code == 200
    assert first.json() == second.json() and first.json()["version"] == 2
    assert second.headers["idempotency-replayed"] == "true" and "idempotency-replayed" not in first.headers
    assert first.headers["etag"] == second.headers["etag"] == case.headers["etag"] == '"2"'
    assert other.status_code == 409 and other.json()["type"] == "/problems/idempotency_key_reused"
    assert history_count(pg_app, case_id) == 2  # registration and one eligibility record


def test_twenty_concurrent_fires_with_the_same_if_match_one_wins(pg_app: App, server: str) -> None:
    case_id = advance_to(pg_app, "inquiry")
    headers = {**bearer(pg_app), "If-Match": '"1"'}
    url = f"{server}/cases/{case_id}/transitions/record_eligibility"
    start = threading.Barrier(20)

    def fire(_: int) -> tuple[int, Any]:
        with httpx.Client(timeout=30) as http:
            start.wait()
            response = http.post(url, json=ELIGIBILITY, headers=headers)
            return response.status_code, response.json()

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(fire, range(20)))

    statuses = sorted(status for status, _ in results)
    assert statuses == [200] + [412] * 19
    conflicts = [body for status, body in results if status == 412]
    assert {c["type"] for c in conflicts} == {"/problems/version_conflict"}
    assert {c["current_version"] for c in conflicts} <= {1, 2}
    assert history_count(pg_app, case_id) == 2


def test_if_match_is_required_and_checked_before_the_payload(pg_app: App, server: str) -> None:
    case_id = advance_to(pg_app, "inquiry")
    url = f"{server}/cases/{case_id}/transitions/record_eligibility"
    with httpx.Client() as http:
        missing = http.post(url, json=ELIGIBILITY, headers=bearer(pg_app))
        malformed = http.post(url, json=ELIGIBILITY, headers={**bearer(pg_app), "If-Match": "yesterday"})
        stale = http.post(url, json={"not": "a payload"}, headers={**bearer(pg_app), "If-Match": '"7"'})
        bad_body = http.post(url, content=b"{not json", headers={**bearer(pg_app), "If-Match": '"1"'})
        unknown_field = http.post(
            url, json={**ELIGIBILITY, "state": "closed"}, headers={**bearer(pg_app), "If-Match": '"1"'}
        )

    assert (missing.status_code, missing.json()["type"]) == (428, "/problems/precondition_required")
    assert (malformed.status_code, malformed.json()["type"]) == (422, "/problems/invalid_payload")
    assert (stale.status_code, stale.json()["current_version"]) == (412, 1)
    assert (bad_body.status_code, bad_body.json()["type"]) == (422, "/problems/invalid_payload")
    assert unknown_field.status_code == 422
    assert [e["loc"] for e in unknown_field.json()["errors"]] == ["state"]
    assert history_count(pg_app, case_id) == 1


def test_no_response_carries_a_stack_trace_or_personal_data(pg_app: App, server: str) -> None:
    from workflow.demo import HOUSEHOLD

    case_id = advance_to(pg_app, "inquiry")
    member = {**HOUSEHOLD[0], "date_of_birth": "not-a-date"}
    with httpx.Client() as http:
        response = http.post(
            f"{server}/cases",
            json={"origin_office": "tallinn", "destination_office": "kyiv", "members": [member]},
            headers=bearer(pg_app),
        )
        read = http.get(f"{server}/cases/{case_id}", headers=bearer(pg_app))
    assert response.status_code == 422
    text = response.text + read.text
    for value in (
        HOUSEHOLD[0]["full_name"],
        HOUSEHOLD[0]["phone"],
        HOUSEHOLD[0]["email"],
        "Traceback",
        "not-a-date",
    ):
        assert value not in text
