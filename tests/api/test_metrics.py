"""GET /metrics in process (SQLite and PostgreSQL): the text format without a token, transitions
and refusals counted by trigger, outcome and reason, and the database's figures read at scrape."""

from __future__ import annotations

import uuid

from fastapi.testclient import TestClient
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import func, select

from tests.api.conftest import api_client, bearer, token_for
from tests.scrape import Samples, delta, parse, value
from tests.support import REGISTRATION
from workflow.adapters import tables as tb
from workflow.bootstrap import App


def scrape(api: TestClient, **headers: str) -> Samples:
    response = api.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == CONTENT_TYPE_LATEST
    return parse(response.text)


def test_transitions_and_refusals_are_counted_by_trigger_outcome_and_reason(
    app: App, api: TestClient
) -> None:
    caseworker = bearer(token_for(app, "tll-cw", "tallinn", "caseworker"))
    before = scrape(api)

    created = api.post("/cases", json=REGISTRATION, headers={**caseworker, "Idempotency-Key": "k-1"})
    again = api.post("/cases", json=REGISTRATION, headers={**caseworker, "Idempotency-Key": "k-1"})
    case_id = created.json()["case_id"]
    url = f"/cases/{case_id}/transitions"
    incomplete = api.post(f"{url}/submit_application", json={}, headers={**caseworker, "If-Match": '"1"'})
    unknown = api.post(f"{url}/teleport", json={}, headers={**caseworker, "If-Match": '"1"'})
    stranger = api.get(f"/cases/{uuid.uuid4()}", headers=caseworker)
    anonymous = api.get(f"/cases/{case_id}")
    after = scrape(api)

    assert [r.status_code for r in (created, again, incomplete, unknown, stranger, anonymous)] == [
        201, 201, 409, 404, 404, 401
    ]  # fmt: skip
    fired = {
        ("register_inquiry", "ok"): 1,
        ("register_inquiry", "replayed"): 1,
        ("submit_application", "guard_failed"): 1,
        ("unknown", "unknown_trigger"): 1,  # the caller's text never becomes a label
    }
    for (trigger, outcome), n in fired.items():
        assert delta(before, after, "avrr_transitions_total", trigger=trigger, outcome=outcome) == n
    assert delta(before, after, "avrr_transitions_total") == sum(fired.values())
    refused = {"guard_failed": 1, "unknown_trigger": 1, "unknown_case": 1, "unauthenticated": 1}
    for reason, n in refused.items():
        assert delta(before, after, "avrr_requests_refused_total", reason=reason) == n
    assert delta(before, after, "avrr_requests_refused_total") == sum(refused.values())
    text = api.get("/metrics").text
    assert case_id not in text and "teleport" not in text  # no ids, no caller's text


def test_the_database_figures_are_read_at_scrape_time(app: App) -> None:
    caseworker = bearer(token_for(app, "tll-cw", "tallinn", "caseworker"))
    with api_client(app) as api:
        for _ in range(2):
            assert api.post("/cases", json=REGISTRATION, headers=caseworker).status_code == 201
        samples = scrape(api)
        cached = scrape(api)  # within the cache's time: the same figures, no query
    with app.db.connect() as conn:
        unsent = conn.scalar(select(func.count()).where(tb.outbox.c.sent_at.is_(None)))

    assert value(samples, "avrr_ops_status_up") == 1
    assert value(samples, "avrr_cases", state="inquiry", office="tallinn") == 2
    assert value(samples, "avrr_cases") == 2
    assert value(samples, "avrr_outbox_backlog") == unsent == 2
    assert value(samples, "avrr_outbox_oldest_unsent_age_seconds") >= 0
    for name in ("avrr_dead_letters_open", "avrr_timers_due", "avrr_timers_overdue", "avrr_cases_stuck"):
        assert (name, frozenset()) in samples and value(samples, name) == 0
    assert {k: v for k, v in cached.items() if k[0].startswith("avrr_cases")} == {
        k: v for k, v in samples.items() if k[0].startswith("avrr_cases")
    }


def test_a_metrics_token_when_set_is_required(app: App) -> None:
    with api_client(app, metrics_token="scraper-secret") as api:
        refused = api.get("/metrics")
        wrong = api.get("/metrics", headers={"Authorization": "Bearer guess"})
        scrape(api, Authorization="Bearer scraper-secret")

    assert refused.status_code == wrong.status_code == 401
    assert refused.json()["type"] == "/problems/unauthenticated"


def test_metrics_are_documented_as_needing_no_token(api: TestClient) -> None:
    operation = api.get("/openapi.json").json()["paths"]["/metrics"]["get"]
    assert operation["security"] == []
    assert CONTENT_TYPE_LATEST in operation["responses"]["200"]["content"]
