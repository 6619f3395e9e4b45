"""The read side over HTTP: case lists (scope, filters, pages), households (access log), the event
feed (scope, cursor) and the lifecycle; on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.api.conftest import bearer, token_for
from tests.support import REGISTRATION, advance_to
from workflow.adapters import tables as tb
from workflow.adapters.queries import EVENT_SETTLE
from workflow.adapters.repository import SqlCaseRepository
from workflow.bootstrap import App
from workflow.domain.actors import Actor, Role
from workflow.domain.diagram import mermaid
from workflow.domain.lifecycle import LIFECYCLE
from workflow.domain.machine import can_see

READ_ROUTES = (
    "/cases",
    "/cases/00000000-0000-4000-8000-000000000000/household",
    "/events",
    "/lifecycle",
    "/lifecycle/diagram",
)
SUMMARY_KEYS = {
    "id",
    "state",
    "version",
    "origin_office",
    "destination_office",
    "owner_office",
    "updated_at",
    "overdue",
}


def open_case(app: App, origin: str = "tallinn", destination: str = "kyiv") -> str:
    caseworker = Actor.of(f"{origin}-caseworker", origin, Role.CASEWORKER)
    payload = {**REGISTRATION, "origin_office": origin, "destination_office": destination}
    return app.transitions.create_case(caseworker, payload).case_id


def caseworker(app: App, office: str) -> dict[str, str]:
    return bearer(token_for(app, f"{office}-caseworker", office, Role.CASEWORKER))


def all_pages(api: TestClient, headers: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    for _ in range(100):
        response = api.get(
            "/cases", params={**params, **({"cursor": cursor} if cursor else {})}, headers=headers
        )
        assert response.status_code == 200, response.json()
        body = response.json()
        items += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError("the pages never ended")


def ids(items: list[dict[str, Any]]) -> list[str]:
    return [item["id"] for item in items]


@pytest.fixture
def spread(app: App) -> dict[str, str]:
    """Cases between the three offices; one handed over from tallinn to kyiv (kyiv owns it)."""
    return {
        "tallinn-kyiv": open_case(app, "tallinn", "kyiv"),
        "tallinn-riga": open_case(app, "tallinn", "riga"),
        "kyiv-riga": open_case(app, "kyiv", "riga"),
        "riga-kyiv": open_case(app, "riga", "kyiv"),
        "handed-over": advance_to(app, "handed_over"),
    }


# --- every endpoint needs a token ---------------------------------------------------------------


@pytest.mark.parametrize("path", READ_ROUTES)
def test_read_routes_answer_401_without_a_token_or_with_a_bad_one(api: TestClient, path: str) -> None:
    for headers in ({}, bearer("avrr_000000000000_not-a-token")):
        response = api.get(path, headers=headers)
        assert response.status_code == 401, (path, headers)
        assert response.json()["type"] == "/problems/unauthenticated"
        assert response.headers["content-type"] == "application/problem+json"


def test_read_routes_are_documented_with_their_refusals(api: TestClient) -> None:
    paths = api.get("/openapi.json").json()["paths"]
    for path in READ_ROUTES:
        template = path.replace("00000000-0000-4000-8000-000000000000", "{case_id}")
        operation = paths[template]["get"]
        assert operation["summary"] and "401" in operation["responses"], template
    assert "404" in paths["/cases/{case_id}/household"]["get"]["responses"]
    assert "422" in paths["/cases"]["get"]["responses"]


# --- GET /cases ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("office", "roles"),
    [
        ("tallinn", (Role.CASEWORKER,)),
        ("kyiv", (Role.FINANCE_OFFICER,)),
        ("riga", (Role.APPROVER,)),
        (None, (Role.SYSTEM,)),  # office-less automation sees every case, as can_see says
        (None, (Role.OPS,)),  # office-less staff see none
    ],
)
def test_the_list_holds_exactly_the_cases_can_see_allows(
    app: App, api: TestClient, spread: dict[str, str], office: str | None, roles: tuple[Role, ...]
) -> None:
    actor = Actor.of("reader", office, *roles)
    with app.db.connect() as conn:
        repo = SqlCaseRepository(conn)
        expected = {case_id for case_id in spread.values() if can_see(repo.get(case_id), actor)}  # type: ignore[arg-type]
    listed = all_pages(api, bearer(token_for(app, "reader", office, *roles)), limit=2)
    assert set(ids(listed)) == expected
    assert len(listed) == len(expected)


def test_list_items_carry_offices_and_state_but_no_personal_data(
    app: App, api: TestClient, spread: dict[str, str]
) -> None:
    response = api.get("/cases", headers=caseworker(app, "kyiv"))
    items = {item["id"]: item for item in response.json()["items"]}
    handed = items[spread["handed-over"]]
    assert set(handed) == SUMMARY_KEYS
    assert handed["state"] == "handed_over"
    assert (handed["origin_office"], handed["destination_office"], handed["owner_office"]) == (
        "tallinn",
        "kyiv",
        "kyiv",
    )
    assert handed["version"] > 1 and handed["overdue"] == []
    assert "Demo" not in response.text and "example.org" not in response.text


def test_the_state_filter_takes_several_states_and_refuses_unknown_ones(
    app: App, api: TestClient, spread: dict[str, str]
) -> None:
    headers = caseworker(app, "tallinn")
    inquiries = api.get("/cases", params={"state": "inquiry"}, headers=headers).json()["items"]
    assert set(ids(inquiries)) == {spread["tallinn-kyiv"], spread["tallinn-riga"]}
    both = api.get("/cases", params={"state": ["inquiry", "handed_over"]}, headers=headers).json()["items"]
    assert set(ids(both)) == {spread["tallinn-kyiv"], spread["tallinn-riga"], spread["handed-over"]}
    response = api.get("/cases", params={"state": ["inquiry", "limbo"]}, headers=headers)
    assert response.status_code == 422
    assert response.json()["type"] == "/problems/invalid_payload"
    assert "limbo" in response.json()["detail"]


def test_the_office_filter_narrows_to_cases_that_office_takes_part_in(
    app: App, api: TestClient, spread: dict[str, str]
) -> None:
    from_tallinn = api.get("/cases", params={"office": "riga"}, headers=caseworker(app, "tallinn"))
    assert ids(from_tallinn.json()["items"]) == [spread["tallinn-riga"]]
    from_riga = api.get("/cases", params={"office": "kyiv"}, headers=caseworker(app, "riga"))
    # kyiv-riga is an inquiry: not shared with riga, its destination, until travel is booked.
    assert set(ids(from_riga.json()["items"])) == {spread["riga-kyiv"]}
    own = api.get("/cases", params={"office": "tallinn"}, headers=caseworker(app, "tallinn")).json()["items"]
    assert set(ids(own)) == {spread[k] for k in ("tallinn-kyiv", "tallinn-riga", "handed-over")}
    system = bearer(token_for(app, "system:reports", None, Role.SYSTEM))
    from_system = api.get("/cases", params={"office": "riga"}, headers=system).json()["items"]
    assert set(ids(from_system)) == {spread[k] for k in ("tallinn-riga", "kyiv-riga", "riga-kyiv")}
    # An office the caller shares nothing with, or no office at all: nothing, not an error.
    assert api.get("/cases", params={"office": "oslo"}, headers=caseworker(app, "riga")).json()["items"] == []
    bad = api.get("/cases", params={"office": "x y"}, headers=caseworker(app, "riga"))
    assert bad.status_code == 422


def test_updated_since_keeps_the_cases_changed_at_or_after_that_time(
    app: App, api: TestClient, spread: dict[str, str]
) -> None:
    app.clock.advance(hours=1)  # type: ignore[attr-defined]
    since = app.clock.now()
    app.transitions.fire(
        spread["tallinn-kyiv"],
        "withdraw",
        Actor.of("tallinn-caseworker", "tallinn", Role.CASEWORKER),
        {"reason": "family decided to stay"},
    )
    headers = caseworker(app, "tallinn")
    changed = api.get("/cases", params={"updated_since": since.isoformat()}, headers=headers).json()
    assert ids(changed["items"]) == [spread["tallinn-kyiv"]]
    assert changed["items"][0]["state"] == "withdrawn"
    naive = api.get("/cases", params={"updated_since": "2026-11-28T10:00:00"}, headers=headers)
    assert naive.status_code == 422
    later = (since + timedelta(seconds=1)).isoformat()
    assert api.get("/cases", params={"updated_since": later}, headers=headers).json()["items"] == []


def test_pages_walk_every_case_once_in_order_of_change_then_id(app: App, api: TestClient) -> None:
    # Many cases share an updated_at (the clock stands still), so the id breaks the ties.
    opened = [open_case(app) for _ in range(7)]
    app.clock.advance(minutes=5)  # type: ignore[attr-defined]
    opened += [open_case(app) for _ in range(4)]
    headers = caseworker(app, "tallinn")
    for limit in (1, 3, 4, 11, 50):
        walked = all_pages(api, headers, limit=limit)
        assert ids(walked) == sorted(opened[:7]) + sorted(opened[7:]), limit
    first = api.get("/cases", params={"limit": 11}, headers=headers).json()
    assert first["next_cursor"] is None  # exactly one full page: no empty page after it


def test_a_case_changed_while_paging_is_seen_again_at_the_end_not_lost(app: App, api: TestClient) -> None:
    opened = sorted(open_case(app) for _ in range(4))
    headers = caseworker(app, "tallinn")
    first = api.get("/cases", params={"limit": 2}, headers=headers).json()
    assert ids(first["items"]) == opened[:2]
    app.clock.advance(minutes=1)  # type: ignore[attr-defined]
    app.transitions.fire(
        opened[0], "withdraw", Actor.of("cw", "tallinn", Role.CASEWORKER), {"reason": "changed mind"}
    )
    rest = all_pages(api, headers, limit=2, cursor=first["next_cursor"])
    assert ids(rest) == [*opened[2:], opened[0]]


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 201},
        {"cursor": "not-a-cursor"},
        {"cursor": "W10"},  # base64 of "[]"
        {"cursor": "WyIyMDI2LTExLTI4VDA5OjAwOjAwIiwieCJd"},  # a naive time
        {"cursor": "WyIyMDI2LTExLTI4VDA5OjAwOjAwWiIsIlx1MDAwMCJd"},  # a NUL in the id
        {"cursor": "WyIyMDI2LTExLTI4VDA5OjAwOjAwWiIsIlx1ZDgwMCJd"},  # a lone surrogate in the id
        {"overdue": "maybe"},
        {"updated_since": "yesterday"},
    ],
)
def test_bad_list_parameters_answer_422_invalid_payload(
    app: App, api: TestClient, params: dict[str, Any]
) -> None:
    response = api.get("/cases", params=params, headers=caseworker(app, "tallinn"))
    assert response.status_code == 422, response.json()
    assert response.json()["type"] == "/problems/invalid_payload"


def test_the_overdue_filter_finds_cases_with_a_pending_deadline_past_due(app: App, api: TestClient) -> None:
    pending = advance_to(app, "handover_pending")  # the acknowledgement is due in handover_ack_days
    fresh = open_case(app, "kyiv", "riga")  # kyiv's own inquiry: no deadline
    headers = caseworker(app, "kyiv")
    assert api.get("/cases", params={"overdue": "true"}, headers=headers).json()["items"] == []
    app.clock.advance(days=30)  # type: ignore[attr-defined]
    late = api.get("/cases", params={"overdue": "true"}, headers=headers).json()["items"]
    assert ids(late) == [pending]
    [deadline] = late[0]["overdue"]
    with app.db.connect() as conn:
        t = tb.timers.c
        due_at = conn.scalar(select(t.due_at).where(t.case_id == pending, t.status == "pending"))
    assert deadline["name"] == "handover_acknowledgement"
    assert deadline["due_at"].replace("Z", "+00:00") == due_at.isoformat()
    on_time = api.get("/cases", params={"overdue": "false"}, headers=headers).json()["items"]
    assert ids(on_time) == [fresh]
    # Another office's late case stays out of sight.
    assert (
        api.get("/cases", params={"overdue": "true"}, headers=caseworker(app, "riga")).json()["items"] == []
    )


# --- GET /cases/{id}/household ------------------------------------------------------------------


def test_the_household_is_read_by_both_offices_and_each_read_is_logged(app: App, api: TestClient) -> None:
    case_id = advance_to(app, "travel_booked")  # shared with kyiv from the booking on
    for office in ("tallinn", "kyiv"):
        response = api.get(
            f"/cases/{case_id}/household",
            headers={**caseworker(app, office), "X-Request-ID": f"req-{office}"},
        )
        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-store"
        body = response.json()
        assert body["case_id"] == case_id
        members = body["members"]
        assert [m["full_name"] for m in members] == [m["full_name"] for m in REGISTRATION["members"]]
        assert members[0]["date_of_birth"] == REGISTRATION["members"][0]["date_of_birth"]
        assert (members[0]["phone"], members[0]["email"]) == ("+372 5555 0101", "principal@example.org")
        assert members[1]["phone"] is None and members[0]["relationship"] == "principal"
    a = tb.access_log.c
    with app.db.connect() as conn:
        rows = conn.execute(
            select(a.action, a.outcome, a.actor_id, a.office, a.case_id, a.request_id)
            .where(a.action == "read_household")
            .order_by(a.id)
        ).all()
    assert [tuple(r) for r in rows] == [
        ("read_household", "ok", "tallinn-caseworker", "tallinn", case_id, "req-tallinn"),
        ("read_household", "ok", "kyiv-caseworker", "kyiv", case_id, "req-kyiv"),
    ]


@pytest.mark.parametrize("which", ["another office's", "unknown", "overlong"])
def test_a_household_the_caller_may_not_see_answers_404_and_the_refusal_is_logged(
    app: App, api: TestClient, which: str
) -> None:
    case_id = {
        "another office's": open_case(app, "tallinn", "kyiv"),
        "unknown": "00000000-0000-4000-8000-000000000000",
        "overlong": "x" * 300,
    }[which]
    response = api.get(f"/cases/{case_id}/household", headers=caseworker(app, "riga"))
    assert response.status_code == 404
    assert response.json()["type"] == "/problems/unknown_case"
    assert "Demo" not in response.text
    a = tb.access_log.c
    with app.db.connect() as conn:
        outcomes = conn.execute(select(a.outcome, a.action, a.case_id)).all()
    logged_id = case_id if len(case_id) <= tb.ID_LENGTH else None  # an overlong id names no case
    assert [tuple(r) for r in outcomes] == [("unknown_case", "GET /cases/{case_id}/household", logged_id)]


# --- GET /events --------------------------------------------------------------------------------


def feed(api: TestClient, headers: dict[str, str], after: int = 0, limit: int = 100) -> dict[str, Any]:
    response = api.get("/events", params={"after": after, "limit": limit}, headers=headers)
    assert response.status_code == 200, response.json()
    return response.json()  # type: ignore[no-any-return]


def outbox_rows(app: App) -> list[tuple[int, str, str, str, int]]:
    o = tb.outbox.c
    with app.db.connect() as conn:
        rows = conn.execute(
            select(o.id, o.event_id, o.event_type, o.case_id, o.case_version).order_by(o.id)
        ).all()
    return [tuple(r) for r in rows]  # type: ignore[misc]


@pytest.mark.parametrize("office", ["tallinn", "kyiv", "riga"])
def test_the_event_feed_holds_the_events_of_the_cases_the_office_sees_in_order(
    app: App, api: TestClient, spread: dict[str, str], office: str
) -> None:
    app.clock.advance(seconds=EVENT_SETTLE.total_seconds() + 1)  # type: ignore[attr-defined]
    visible = {
        case_id
        for name, case_id in spread.items()
        # An inquiry is its origin's alone; the handed-over case is seen by both its offices.
        if name.startswith(f"{office}-") or (name == "handed-over" and office != "riga")
    }
    expected = [r for r in outbox_rows(app) if r[3] in visible]
    headers = caseworker(app, office)
    got: list[dict[str, Any]] = []
    after = 0
    while True:
        page = feed(api, headers, after, limit=3)
        if not page["items"]:
            assert page["next_cursor"] == after  # at the end the cursor stays put
            break
        got += page["items"]
        after = page["next_cursor"]
        assert after == page["items"][-1]["cursor"]
    assert [
        (e["cursor"], e["event_id"], e["event_type"], e["case_id"], e["case_version"]) for e in got
    ] == expected
    assert set(got[0]) == {"cursor", "event_id", "event_type", "case_id", "case_version", "occurred_at"}


def test_the_feed_resumes_from_the_cursor_with_the_new_events_only(app: App, api: TestClient) -> None:
    case_id = open_case(app)
    headers = caseworker(app, "tallinn")
    app.clock.advance(seconds=EVENT_SETTLE.total_seconds() + 1)  # type: ignore[attr-defined]
    first = feed(api, headers)
    assert [e["event_type"] for e in first["items"]] == ["InquiryRegistered"]
    app.transitions.fire(case_id, "withdraw", Actor.of("cw", "tallinn", Role.CASEWORKER), {"reason": "stays"})
    # A young event waits until it has settled, so one committing late cannot be skipped.
    assert feed(api, headers, first["next_cursor"])["items"] == []
    app.clock.advance(seconds=EVENT_SETTLE.total_seconds())  # type: ignore[attr-defined]
    second = feed(api, headers, first["next_cursor"])
    assert [(e["event_type"], e["case_version"]) for e in second["items"]] == [("CaseWithdrawn", 2)]
    assert second["next_cursor"] > first["next_cursor"]


def test_the_feed_skips_other_offices_events_between_its_own(app: App, api: TestClient) -> None:
    mine = [
        open_case(app, "kyiv", "riga") if i % 5 == 0 else open_case(app, "tallinn", "riga") for i in range(15)
    ]
    app.clock.advance(seconds=EVENT_SETTLE.total_seconds() + 1)  # type: ignore[attr-defined]
    page = feed(api, caseworker(app, "kyiv"), limit=2)
    assert [e["case_id"] for e in page["items"]] == [mine[0], mine[5]]
    rest = feed(api, caseworker(app, "kyiv"), page["next_cursor"], limit=2)
    assert [e["case_id"] for e in rest["items"]] == [mine[10]]


@pytest.mark.parametrize(
    "params", [{"after": -1}, {"after": 2**63}, {"limit": 0}, {"limit": 501}, {"after": "x"}]
)
def test_bad_feed_parameters_answer_422(app: App, api: TestClient, params: dict[str, Any]) -> None:
    response = api.get("/events", params=params, headers=caseworker(app, "tallinn"))
    assert response.status_code == 422
    assert response.json()["type"] == "/problems/invalid_payload"


# --- GET /lifecycle -----------------------------------------------------------------------------


def test_the_lifecycle_document_is_the_lifecycle_table(app: App, api: TestClient) -> None:
    response = api.get("/lifecycle", headers=caseworker(app, "riga"))
    assert response.status_code == 200
    doc = response.json()
    assert doc["version"] == LIFECYCLE.version
    assert [s["name"] for s in doc["states"]] == [s.name for s in LIFECYCLE.states]
    assert [t["trigger"] for t in doc["transitions"]] == [t.trigger for t in LIFECYCLE.transitions]
    by_state = {s["name"]: s for s in doc["states"]}
    assert by_state["closed"]["final"] is True
    assert [d["name"] for d in by_state["handover_pending"]["deadlines"]] == ["handover_acknowledgement"]
    schemas = api.get("/openapi.json").json()["components"]["schemas"]
    for t, out in zip(LIFECYCLE.transitions, doc["transitions"], strict=True):
        assert out["sources"] == list(t.sources) and out["dest"] == t.dest
        assert set(out["roles"]) == {r.value for r in t.roles}
        assert out["sides"] == list(t.sides) and out["events"] == list(t.events)
        assert out["guards"] == list(t.guard_names)
        assert out["payload"] in schemas
        assert out["payload_schema"] == f"#/components/schemas/{out['payload']}"


def test_an_unknown_lifecycle_version_answers_404(app: App, api: TestClient) -> None:
    response = api.get("/lifecycle", params={"version": "0.0-nope"}, headers=caseworker(app, "riga"))
    assert response.status_code == 404
    assert response.json()["type"] == "/problems/not_found"


def test_the_diagram_is_mermaid_as_plain_text_or_as_mermaid_when_asked(app: App, api: TestClient) -> None:
    headers = caseworker(app, "tallinn")
    plain = api.get("/lifecycle/diagram", headers=headers)
    assert plain.status_code == 200
    assert plain.headers["content-type"].startswith("text/plain")
    assert plain.text == mermaid(LIFECYCLE)
    typed = api.get(
        "/lifecycle/diagram",
        params={"highlight": "travel_booked"},
        headers={**headers, "Accept": "text/vnd.mermaid"},
    )
    assert typed.headers["content-type"].startswith("text/vnd.mermaid")
    assert typed.text == mermaid(LIFECYCLE, "travel_booked")
    assert "class travel_booked current" in typed.text
