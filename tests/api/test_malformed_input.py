"""Malformed or hostile input answers its documented problem, never a 500, and changes nothing:
bad credentials from a shared address, strings wider than their columns or holding NUL, odd
If-Match values, deeply nested JSON, amounts past 64 bits, bodies over the limit."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select, text

from tests.api.conftest import api_client, api_settings, bearer
from tests.servers import free_port
from tests.support import advance_to, snapshot_tables
from workflow.adapters import tables as tb
from workflow.adapters.channels.webhook import sign
from workflow.adapters.tokens import SqlTokens
from workflow.api.app import create_app
from workflow.api.body_limit import MAX_BODY_BYTES
from workflow.bootstrap import App
from workflow.demo import KBP_CASEWORKER, TLL_CASEWORKER, TLL_TRAVEL
from workflow.domain.actors import Actor, Role

SECRET = "a-handover-secret-the-two-deployments-share"
UNKNOWN = "00000000-0000-0000-0000-000000000000"
TRAVEL = {"departure_on": "2026-12-12", "route": "TLL-WAW", "carrier": "LOT"}
TOO_LARGE = b"x" * (2 * MAX_BODY_BYTES)
al = tb.access_log.c


@pytest.fixture
def client(app: App) -> Iterator[TestClient]:
    with api_client(app, handover_secret=SECRET) as running:
        yield running


def token_of(app: App, actor: Actor) -> dict[str, str]:
    issued, _ = SqlTokens(app.db).create(
        "t", actor.id, actor.office, sorted(actor.roles), timedelta(days=1), app.clock.now()
    )
    return bearer(issued)


def unchanged_but_the_access_log(db: Engine) -> dict[str, Any]:
    """Every table but the access log, where each refusal is recorded by design."""
    return {name: rows for name, rows in snapshot_tables(db).items() if name != "access_log"}


def assert_problem(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["type"] == f"/problems/{code}"


def signed(app: App, body: bytes, key: str = "delivery-1") -> dict[str, str]:
    timestamp = str(int(app.clock.now().timestamp()))
    return {"X-AVRR-Timestamp": timestamp, "X-AVRR-Signature": sign(SECRET, timestamp, body, key)} | {
        "Idempotency-Key": key
    }


# Authentication: only failures count against an address.


def test_a_valid_token_is_served_after_its_address_spent_the_failure_budget(app: App) -> None:
    case_id = advance_to(app, "inquiry")
    good = token_of(app, TLL_CASEWORKER)
    bad = bearer("avrr_000000000000_nope")
    with api_client(app, rate_limit_auth_failures="3/minute") as client:
        failures = [client.get(f"/cases/{case_id}", headers=bad).status_code for _ in range(4)]
        served = client.get(f"/cases/{case_id}", headers=good)
        still_refused = client.get(f"/cases/{case_id}", headers=bad)
        missing = client.get(f"/cases/{case_id}")

    assert failures == [401, 401, 401, 429]
    assert served.status_code == 200 and served.json()["id"] == case_id
    assert_problem(still_refused, 429, "rate_limited")
    assert int(still_refused.headers["retry-after"]) > 0
    # No credential is no guess: it is not counted, and answered 401 whatever the budget.
    assert_problem(missing, 401, "unauthenticated")


def test_each_refused_authentication_is_logged_once_with_its_outcome(app: App) -> None:
    case_id = advance_to(app, "inquiry")
    bad = bearer("avrr_000000000000_nope")
    with api_client(app, rate_limit_auth_failures="2/minute") as client:
        statuses = [client.get(f"/cases/{case_id}", headers=bad).status_code for _ in range(3)]
    assert statuses == [401, 401, 429]
    log = tb.access_log.c
    with app.db.connect() as conn:
        outcomes = conn.scalars(select(log.outcome).where(log.outcome != "ok").order_by(log.id)).all()
    assert outcomes == ["unauthenticated", "unauthenticated", "rate_limited"]


def test_a_failed_authentication_answers_401_even_when_its_log_line_cannot_be_written(app: App) -> None:
    with app.db.begin() as conn:
        conn.execute(text("ALTER TABLE access_log RENAME TO access_log_away"))
    try:
        with api_client(app) as client:
            refused = client.get("/cases", headers=bearer("avrr_000000000000_nope"))
    finally:
        with app.db.begin() as conn:
            conn.execute(text("ALTER TABLE access_log_away RENAME TO access_log"))
    assert_problem(refused, 401, "unauthenticated")


# Strings: as wide as their columns, and without NUL.


@pytest.mark.parametrize("field", ["route", "carrier"])
def test_a_route_or_carrier_wider_than_its_column_is_an_invalid_payload(
    app: App, client: TestClient, field: str
) -> None:
    case_id = advance_to(app, "travel_documents_ready")
    headers = {**token_of(app, TLL_TRAVEL), "If-Match": f'"{app.views.case(case_id)["version"]}"'}
    before = unchanged_but_the_access_log(app.db)
    response = client.post(
        f"/cases/{case_id}/transitions/book_travel", json={**TRAVEL, field: "X" * 65}, headers=headers
    )
    assert_problem(response, 422, "invalid_payload")
    assert [e["loc"] for e in response.json()["errors"]] == [field]
    assert unchanged_but_the_access_log(app.db) == before


def test_sixty_four_characters_of_route_are_booked(app: App, client: TestClient) -> None:
    case_id = advance_to(app, "travel_documents_ready")
    response = client.post(
        f"/cases/{case_id}/transitions/book_travel",
        json={**TRAVEL, "route": "X" * 64, "carrier": "Y" * 64},
        headers={**token_of(app, TLL_TRAVEL), "If-Match": f'"{app.views.case(case_id)["version"]}"'},
    )
    assert response.status_code == 200, response.text
    assert app.views.case(case_id)["state"] == "travel_booked"


@pytest.mark.parametrize(
    "path", ["/cases/%00", "/cases/%00/history", "/cases/a%00b/transitions/record_eligibility"]
)
def test_a_case_id_holding_nul_is_an_unknown_case(app: App, client: TestClient, path: str) -> None:
    headers = {**token_of(app, TLL_CASEWORKER), "If-Match": '"1"'}
    before = unchanged_but_the_access_log(app.db)
    if path.endswith("record_eligibility"):
        response = client.post(path, json={"nationality": "UA"}, headers=headers)
    else:
        response = client.get(path, headers=headers)
    assert_problem(response, 404, "unknown_case")
    assert unchanged_but_the_access_log(app.db) == before
    with app.db.connect() as conn:  # the refusal is logged, without the id that names no case
        logged = conn.execute(
            select(al.outcome, al.case_id).where(al.request_id == response.json()["request_id"])
        )
        assert logged.all() == [("unknown_case", None)]


def test_an_ops_timeline_of_a_case_id_holding_nul_is_an_unknown_case(app: App, client: TestClient) -> None:
    ops = token_of(app, Actor.of("ops-anna", "kyiv", Role.OPS))
    assert_problem(client.get("/ops/cases/a%00b/timeline", headers=ops), 404, "unknown_case")


def test_a_payload_string_holding_nul_is_an_invalid_payload(app: App, client: TestClient) -> None:
    case_id = advance_to(app, "travel_documents_ready")
    travel = {**token_of(app, TLL_TRAVEL), "If-Match": f'"{app.views.case(case_id)["version"]}"'}
    caseworker = token_of(app, TLL_CASEWORKER)
    before = unchanged_but_the_access_log(app.db)
    fired = client.post(
        f"/cases/{case_id}/transitions/book_travel", json={**TRAVEL, "carrier": "LO\u0000T"}, headers=travel
    )
    household = [{"full_name": "Olena\u0000", "date_of_birth": "1990-01-01", "relationship": "principal"}]
    created = client.post(
        "/cases",
        json={"origin_office": "tallinn", "destination_office": "kyiv", "members": household},
        headers=caseworker,
    )
    key = client.post(
        "/cases",
        json={"origin_office": "tallinn", "destination_office": "kyiv", "members": [], "a\u0000": 1},
        headers=caseworker,
    )

    assert_problem(fired, 422, "invalid_payload")
    assert fired.json()["errors"] == [
        {"loc": "carrier", "msg": "String holds a NUL character", "type": "string_nul"}
    ]
    assert_problem(created, 422, "invalid_payload")
    assert [e["loc"] for e in created.json()["errors"]] == ["members.0.full_name"]
    assert_problem(key, 422, "invalid_payload")
    assert unchanged_but_the_access_log(app.db) == before


# If-Match and the body's JSON.


@pytest.mark.parametrize(
    "if_match", [b'"\xb2"', b'"\xb9\xb2"', b'"' + b"9" * 5000 + b'"', b'"' + b"9" * 19 + b'"', b'"-1"']
)
def test_an_if_match_that_is_not_a_version_of_ascii_digits_is_an_invalid_payload(
    app: App, client: TestClient, if_match: bytes
) -> None:
    case_id = advance_to(app, "inquiry")
    headers: dict[str, Any] = {**token_of(app, TLL_CASEWORKER), "If-Match": if_match}
    before = unchanged_but_the_access_log(app.db)
    response = client.post(f"/cases/{case_id}/transitions/submit_application", headers=headers)
    assert_problem(response, 422, "invalid_payload")
    assert unchanged_but_the_access_log(app.db) == before


def test_an_eighteen_digit_if_match_is_a_version_that_conflicts(app: App, client: TestClient) -> None:
    case_id = advance_to(app, "inquiry")
    response = client.post(
        f"/cases/{case_id}/transitions/submit_application",
        headers={**token_of(app, TLL_CASEWORKER), "If-Match": '"' + "9" * 18 + '"'},
    )
    assert_problem(response, 412, "version_conflict")


def test_json_nested_deeper_than_the_parser_goes_is_an_invalid_payload(app: App, client: TestClient) -> None:
    case_id = advance_to(app, "inquiry")
    deep = b"[" * 100_000
    headers = {**token_of(app, TLL_CASEWORKER), "Content-Type": "application/json"}
    before = unchanged_but_the_access_log(app.db)
    fired = client.post(
        f"/cases/{case_id}/transitions/record_eligibility",
        content=deep,
        headers={**headers, "If-Match": '"1"'},
    )
    created = client.post("/cases", content=deep, headers=headers)
    received = client.post("/handover/inbound", content=deep, headers=signed(app, deep))

    for response in (fired, created, received):
        assert_problem(response, 422, "invalid_payload")
        assert response.json()["detail"] == "the body is not JSON"
    assert unchanged_but_the_access_log(app.db) == before


# Money: minor units fit a signed 64-bit integer.


def test_amounts_past_64_bits_of_minor_units_are_invalid_payloads(app: App, client: TestClient) -> None:
    case_id = advance_to(app, "reintegration_counselling")
    member = app.views.case(case_id)["members"][0]["id"]
    line = {"member_id": member, "category": "business", "amount": "100000000000000000000.00"}
    headers = {**token_of(app, KBP_CASEWORKER), "If-Match": f'"{app.views.case(case_id)["version"]}"'}
    before = unchanged_but_the_access_log(app.db)
    drafted = client.post(
        f"/cases/{case_id}/transitions/draft_plan",
        json={"currency": "EUR", "lines": [line]},
        headers=headers,
    )
    just_over = client.post(
        f"/cases/{case_id}/transitions/draft_plan",
        json={"currency": "JPY", "lines": [{**line, "amount": str(2**63)}]},
        headers=headers,
    )
    assert_problem(drafted, 422, "invalid_payload")
    assert_problem(just_over, 422, "invalid_payload")
    assert unchanged_but_the_access_log(app.db) == before

    approved = advance_to(app, "plan_approved")
    headers = {**token_of(app, KBP_CASEWORKER), "If-Match": f'"{app.views.case(approved)["version"]}"'}
    before = unchanged_but_the_access_log(app.db)
    contributed = client.post(
        f"/cases/{approved}/transitions/record_contribution",
        json={"amount": "100000000000000000000.00", "currency": "EUR", "purpose": "rent"},
        headers=headers,
    )
    assert_problem(contributed, 422, "invalid_payload")
    assert unchanged_but_the_access_log(app.db) == before


# Bodies over the limit: refused before they are read.


def test_a_body_over_the_limit_to_the_inbound_handover_is_refused_with_413(
    app: App, client: TestClient
) -> None:
    before = snapshot_tables(app.db)
    declared = client.post("/handover/inbound", content=TOO_LARGE, headers=signed(app, TOO_LARGE))
    streamed = client.post(
        "/handover/inbound", content=iter([TOO_LARGE[:MAX_BODY_BYTES], b"x"]), headers=signed(app, TOO_LARGE)
    )
    assert_problem(declared, 413, "payload_too_large")
    assert_problem(streamed, 413, "payload_too_large")
    assert declared.headers["x-request-id"] == declared.json()["request_id"]
    assert snapshot_tables(app.db) == before


def test_headers_that_cannot_sign_anything_are_refused_before_the_body_is_read(
    app: App, client: TestClient
) -> None:
    streamed = iter([TOO_LARGE])  # read, it would answer 413
    response = client.post(
        "/handover/inbound",
        content=streamed,
        headers={"X-AVRR-Timestamp": "yesterday", "X-AVRR-Signature": "v2=00", "Idempotency-Key": "k"},
    )
    assert_problem(response, 401, "bad_signature")
    assert response.json()["detail"] == "the timestamp is not a whole number of Unix seconds"


def test_a_body_over_the_limit_to_a_transition_is_refused_with_413(app: App, client: TestClient) -> None:
    case_id = advance_to(app, "inquiry")
    headers = {**token_of(app, TLL_CASEWORKER), "If-Match": '"1"', "Content-Type": "application/json"}
    body = json.dumps({"nationality": "UA", "pad": "x" * (2 * MAX_BODY_BYTES)}).encode()
    before = snapshot_tables(app.db)
    url = f"/cases/{case_id}/transitions/record_eligibility"
    declared = client.post(url, content=body, headers=headers)
    streamed = client.post(url, content=iter([body[:MAX_BODY_BYTES], body[MAX_BODY_BYTES:]]), headers=headers)
    assert_problem(declared, 413, "payload_too_large")
    assert_problem(streamed, 413, "payload_too_large")
    assert snapshot_tables(app.db) == before


# The access log: a refusal is answered even when its log line cannot be written.


@pytest.mark.postgres
def test_a_refusal_is_answered_when_its_access_log_line_cannot_be_written(pg_app: App) -> None:
    headers = token_of(pg_app, TLL_CASEWORKER)
    with pg_app.db.begin() as conn:
        conn.execute(text("ALTER TABLE access_log RENAME TO access_log_away"))
    try:
        with api_client(pg_app) as client:
            response = client.get(f"/cases/{UNKNOWN}", headers=headers)
    finally:
        with pg_app.db.begin() as conn:
            conn.execute(text("ALTER TABLE access_log_away RENAME TO access_log"))
    assert_problem(response, 404, "unknown_case")


@pytest.fixture
def server(pg_app: App) -> Iterator[str]:
    """uvicorn on loopback, over PostgreSQL, with the handover secret."""
    config = uvicorn.Config(
        create_app(pg_app, api_settings(pg_app, handover_secret=SECRET)),
        host="127.0.0.1",
        port=free_port(),
        log_level="warning",
    )
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not running.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{config.port}"
    running.should_exit = True
    thread.join(10)


@pytest.mark.postgres
def test_uvicorn_answers_413_to_bodies_over_the_limit_and_serves_on(pg_app: App, server: str) -> None:
    headers = {"X-AVRR-Timestamp": str(int(pg_app.clock.now().timestamp())), "X-AVRR-Signature": "v2=0"}
    before = snapshot_tables(pg_app.db)
    with httpx.Client(timeout=30) as http:
        declared = http.post(f"{server}/handover/inbound", content=TOO_LARGE, headers=headers)
        chunks = iter([TOO_LARGE[:MAX_BODY_BYTES], TOO_LARGE[MAX_BODY_BYTES:]])
        streamed = http.post(f"{server}/handover/inbound", content=chunks, headers=headers)
        live = http.get(f"{server}/health/live")
    assert_problem(declared, 413, "payload_too_large")
    assert_problem(streamed, 413, "payload_too_large")
    assert live.status_code == 200
    assert snapshot_tables(pg_app.db) == before
