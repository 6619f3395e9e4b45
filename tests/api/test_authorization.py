"""The authorization matrix, built from the lifecycle definition: every role, by every trigger,
from the origin, the destination and a stranger office; and every route without a token."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from config.settings import Settings
from tests.support import advance_to
from workflow.adapters import tables as tb
from workflow.adapters.tokens import SqlTokens
from workflow.api.app import create_app
from workflow.bootstrap import App
from workflow.domain.actors import Role
from workflow.domain.lifecycle import DESTINATION, LIFECYCLE, ORIGIN
from workflow.service_layer.transitions import REGISTER

pytestmark = pytest.mark.postgres
OFFICE_OF_SIDE = {ORIGIN: "tallinn", DESTINATION: "kyiv"}
STRANGER = "riga"
# Routes that authenticate otherwise: liveness must answer a load balancer; the inbound
# handover is authenticated by its HMAC signature, not by a token.
UNAUTHENTICATED_BY_DESIGN = {"/health/live", "/health/ready", "/handover/inbound", "/metrics"}


@pytest.fixture
def client(pg_app: App) -> Iterator[TestClient]:
    settings = Settings(database_url=str(pg_app.db.url), environment="test", secret_key="x" * 40)
    with TestClient(create_app(pg_app, settings)) as client:
        yield client


def token(app: App, office: str, role: Role) -> str:
    issued, _ = SqlTokens(app.db).create(
        "matrix", f"{office}-{role.value}", office, [role], timedelta(days=1), app.clock.now()
    )
    return issued


def expected(trigger: str, office: str, role: Role) -> str:
    """What the lifecycle table says, independently of the engine's own checks."""
    t = LIFECYCLE.by_trigger[trigger]
    if office == STRANGER:
        return "unknown_case"  # another office's case does not exist for it
    sides = {side for side, code in OFFICE_OF_SIDE.items() if code == office}
    if role not in t.roles or not sides & set(t.sides):
        return "permission_denied"
    return "permitted"


def test_each_role_by_each_trigger_by_office_gets_what_the_lifecycle_says(
    pg_app: App, client: TestClient
) -> None:
    case_id = advance_to(pg_app, "handover_pending")  # handed from tallinn to kyiv
    tokens = {(o, r): token(pg_app, o, r) for o in (*OFFICE_OF_SIDE.values(), STRANGER) for r in Role}
    with pg_app.db.connect() as conn:
        history_before = conn.scalar(select(func.count()).select_from(tb.case_history))
    mismatches = []
    checked = 0
    for t in LIFECYCLE.transitions:
        if t.trigger == REGISTER:
            continue
        for (office, role), bearer in tokens.items():
            # A stale If-Match: whoever may fire gets version_conflict, and nothing changes.
            response = client.post(
                f"/cases/{case_id}/transitions/{t.trigger}",
                json={},
                headers={"Authorization": f"Bearer {bearer}", "If-Match": '"999"'},
            )
            outcome = response.json()["type"].removeprefix("/problems/")
            want = expected(t.trigger, office, role)
            got = "permitted" if outcome == "version_conflict" else outcome
            checked += 1
            if got != want:
                mismatches.append((t.trigger, office, role.value, want, outcome, response.status_code))
    assert mismatches == []
    assert checked == (len(LIFECYCLE.transitions) - 1) * 3 * len(Role)
    with pg_app.db.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(tb.case_history)) == history_before
        refusals = conn.scalar(
            select(func.count()).select_from(tb.access_log).where(tb.access_log.c.outcome != "ok")
        )
    assert refusals == checked  # every attempt was refused one way or another, and logged
    with pg_app.db.connect() as conn:
        log = tb.access_log.c
        anonymous = conn.scalar(
            select(func.count()).where(log.outcome != "ok", log.actor_id.is_(None) | log.case_id.is_(None))
        )
        actions = set(conn.scalars(select(log.action).distinct()))
    assert anonymous == 0  # who tried, on which case
    assert all("{case_id}" in a for a in actions), actions  # route templates, never ids


def test_statuses_of_the_matrix_outcomes_are_404_403_and_412(pg_app: App, client: TestClient) -> None:
    case_id = advance_to(pg_app, "inquiry")
    url = f"/cases/{case_id}/transitions/record_eligibility"
    for office, role, status in (
        (STRANGER, Role.CASEWORKER, 404),
        ("tallinn", Role.FINANCE_OFFICER, 403),
        ("tallinn", Role.CASEWORKER, 412),
    ):
        headers = {"Authorization": f"Bearer {token(pg_app, office, role)}", "If-Match": '"999"'}
        response = client.post(url, json={}, headers=headers)
        assert response.status_code == status
        assert response.headers["content-type"] == "application/problem+json"


def test_registering_a_case_takes_a_caseworker_of_the_origin_office(pg_app: App, client: TestClient) -> None:
    from tests.support import REGISTRATION

    register = LIFECYCLE.by_trigger[REGISTER]
    for role in Role:
        for office in ("tallinn", "kyiv"):
            response = client.post(
                "/cases",
                json=REGISTRATION,
                headers={"Authorization": f"Bearer {token(pg_app, office, role)}"},
            )
            allowed = role in register.roles and office == REGISTRATION["origin_office"]
            assert (response.status_code == 201) == allowed, (role, office, response.json())
            if not allowed:
                assert response.status_code == 403


def _fill(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "00000000-0000-4000-8000-000000000000", path)


def test_every_route_without_a_token_answers_401(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]  # every documented route
    checked = 0
    for path, operations in paths.items():
        if path in UNAUTHENTICATED_BY_DESIGN:
            continue
        for method in operations:
            response = client.request(method.upper(), _fill(path), json={})
            assert response.status_code == 401, (method, path, response.status_code)
            assert response.json()["type"] == "/problems/unauthenticated"
            assert response.headers["www-authenticate"].startswith("Bearer")
            checked += 1
    assert checked >= len(LIFECYCLE.transitions) - 1 + 3  # every trigger, create, read, history


def test_a_bad_an_expired_and_a_revoked_token_answer_401(pg_app: App, client: TestClient) -> None:
    tokens = SqlTokens(pg_app.db)
    expired, _ = tokens.create(
        "old", "cw", "tallinn", [Role.CASEWORKER], timedelta(seconds=1), pg_app.clock.now()
    )
    revoked, info = tokens.create(
        "gone", "cw", "tallinn", [Role.CASEWORKER], timedelta(days=1), pg_app.clock.now()
    )
    tokens.revoke(info.prefix, pg_app.clock.now())
    pg_app.clock.advance(seconds=2)  # type: ignore[attr-defined]
    good = token(pg_app, "tallinn", Role.CASEWORKER)
    forged = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    for bearer in (expired, revoked, forged, "not-a-token", "avrr_short_x"):
        response = client.get(
            "/cases/00000000-0000-4000-8000-000000000000", headers={"Authorization": f"Bearer {bearer}"}
        )
        assert response.status_code == 401, bearer
    response = client.get(
        "/cases/00000000-0000-4000-8000-000000000000", headers={"Authorization": f"Bearer {good}"}
    )
    assert response.status_code == 404


def test_failed_token_checks_are_rate_limited_per_address(pg_app: App) -> None:
    settings = Settings(
        database_url=str(pg_app.db.url),
        environment="test",
        secret_key="x" * 40,
        rate_limit_auth_failures="3/minute",
    )
    with TestClient(create_app(pg_app, settings)) as client:
        bad = {"Authorization": "Bearer avrr_000000000000_nope"}
        statuses = [client.get("/cases/x", headers=bad).status_code for _ in range(5)]
        good = {"Authorization": f"Bearer {token(pg_app, 'tallinn', Role.CASEWORKER)}"}
        after = client.get("/cases/x", headers=good)
        still_bad = client.get("/cases/x", headers=bad)
    assert statuses == [401, 401, 401, 429, 429]
    assert int(still_bad.headers["retry-after"]) > 0 and still_bad.status_code == 429
    # A valid token from the same address is served: another caller's guesses cannot lock it out.
    assert after.status_code == 404


def test_before_travel_is_booked_the_destination_is_refused_as_a_stranger_is(
    pg_app: App, client: TestClient
) -> None:
    """Until the case is shared with it (the travel booking), the destination office gets what a
    stranger gets: unknown_case for every trigger and every read, whatever its role."""
    case_id = advance_to(pg_app, "travel_documents_ready")
    reads = ("", "/history", "/household", "/plan", "/disbursements", "/contributions")
    for office in ("kyiv", STRANGER):
        for role in Role:
            headers = {"Authorization": f"Bearer {token(pg_app, office, role)}", "If-Match": '"999"'}
            outcomes = {
                response.json().get("type", str(response.status_code)).removeprefix("/problems/")
                for response in (
                    *(client.get(f"/cases/{case_id}{read}", headers=headers) for read in reads),
                    *(
                        client.post(f"/cases/{case_id}/transitions/{t.trigger}", json={}, headers=headers)
                        for t in LIFECYCLE.transitions
                        if t.trigger != REGISTER
                    ),
                )
            }
            assert outcomes == {"unknown_case"}, (office, role.value, outcomes)
