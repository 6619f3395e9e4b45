"""Who sees a case: the origin office always; the destination office only once the case is shared
with it (the travel booking, or a handover received from another deployment), and from then on
whatever happens; before, it answers unknown_case as any other office. On SQLite and PostgreSQL."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from tests.api.conftest import api_client, bearer, token_for
from tests.support import advance_to, case_row
from workflow.adapters import tables as tb
from workflow.adapters.db import make_engine
from workflow.adapters.migrate import downgrade, upgrade
from workflow.adapters.queries import EVENT_SETTLE
from workflow.adapters.repository import SqlCaseRepository
from workflow.bootstrap import App
from workflow.demo import HOUSEHOLD, STEPS, TLL_APPROVER, TLL_CASEWORKER, TLL_TRAVEL
from workflow.domain.actors import Role
from workflow.domain.effects import CLOSE_TASKS, NOTIFY_OFFICE, effects_of
from workflow.domain.lifecycle import DESTINATION, LIFECYCLE
from workflow.service_layer.handover import HandoverInbox

CASE_READS = ("", "/history", "/household", "/plan", "/disbursements", "/contributions")
WITHDRAW = ("withdraw", TLL_CASEWORKER, {"reason": "the family decided to stay"})
CANCEL = ("cancel_booking", TLL_TRAVEL, {"reason": "the flight was cancelled"})
REJECT = ("reject_return", TLL_APPROVER, {"reason": "an expulsion order was found"})


@pytest.fixture
def api(app: App) -> Iterator[TestClient]:
    with api_client(app) as client:
        yield client


def walk(app: App, state: str, *moves: tuple[str, Any, dict[str, str]]) -> str:
    """A new case along the seed story up to ``state``, then the given moves (trigger, actor, payload)."""
    case_id = advance_to(app, state)
    for trigger, actor, payload in moves:
        app.transitions.fire(case_id, trigger, actor, payload)
    return case_id


def resume(app: App, case_id: str, trigger: str, state: str) -> None:
    """Walks the seed story on from its step ``trigger`` until the case is in ``state``."""
    steps = iter(STEPS[[s.trigger for s in STEPS].index(trigger) :])
    while app.views.case(case_id)["state"] != state:
        step = next(steps)
        payload = step.payload(app.views.case(case_id)) if callable(step.payload) else step.payload
        app.transitions.fire(case_id, step.trigger, step.actor, payload)


def listed(api: TestClient, headers: dict[str, str], **params: Any) -> set[str]:
    response = api.get("/cases", params={"limit": 200, **params}, headers=headers)
    assert response.status_code == 200, response.json()
    return {item["id"] for item in response.json()["items"]}


def in_feed(app: App, api: TestClient, headers: dict[str, str]) -> set[str]:
    app.clock.advance(seconds=EVENT_SETTLE.total_seconds() + 1)  # type: ignore[attr-defined]
    response = api.get("/events", params={"limit": 500}, headers=headers)
    assert response.status_code == 200, response.json()
    return {event["case_id"] for event in response.json()["items"]}


def assert_sees(app: App, api: TestClient, office: str, case_id: str) -> None:
    headers = bearer(token_for(app, f"{office}-caseworker", office, Role.CASEWORKER))
    for read in ("", "/history", "/household"):
        response = api.get(f"/cases/{case_id}{read}", headers=headers)
        assert response.status_code == 200, (office, read, response.json())
    assert case_id in listed(api, headers)
    assert case_id in in_feed(app, api, headers)


def assert_unknown(app: App, api: TestClient, office: str, case_id: str) -> None:
    """Every read, the lists, the feed and a fire: as if the case did not exist."""
    headers = bearer(token_for(app, f"{office}-reader", office, *Role))
    for read in CASE_READS:
        response = api.get(f"/cases/{case_id}{read}", headers=headers)
        assert response.status_code == 404, (office, read, response.status_code)
        assert response.json()["type"] == "/problems/unknown_case", read
    fired = api.post(
        f"/cases/{case_id}/transitions/confirm_arrival", json={}, headers={**headers, "If-Match": '"1"'}
    )
    assert fired.status_code == 404 and fired.json()["type"] == "/problems/unknown_case", fired.json()
    state = app.views.case(case_id)["state"]
    for params in ({}, {"office": "tallinn"}, {"office": office}, {"state": state}):
        assert case_id not in listed(api, headers, **params), params
    assert case_id not in in_feed(app, api, headers)
    assert "Demo" not in json.dumps([api.get("/cases", headers=headers).json()])


# -- before the sharing point --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "moves"),
    [
        ("inquiry", ()),
        ("application_submitted", (REJECT,)),
        ("inquiry", (WITHDRAW,)),
        ("travel_documents_ready", (WITHDRAW,)),  # the last step before the booking
    ],
    ids=["inquiry", "rejected", "withdrawn-at-inquiry", "withdrawn-with-documents-ready"],
)
def test_a_case_never_booked_is_unknown_to_the_destination_and_seen_by_the_origin(
    app: App, api: TestClient, state: str, moves: tuple[tuple[str, Any, dict[str, str]], ...]
) -> None:
    case_id = walk(app, state, *moves)
    assert_unknown(app, api, "kyiv", case_id)
    assert_unknown(app, api, "riga", case_id)
    assert_sees(app, api, "tallinn", case_id)
    system = bearer(token_for(app, "system:reports", None, Role.SYSTEM))
    assert case_id in listed(api, system)
    with app.db.connect() as conn:
        assert SqlCaseRepository(conn).get(case_id).shared_at is None  # type: ignore[union-attr]


# -- from the sharing point on -------------------------------------------------------------------


@pytest.mark.parametrize(
    "after",
    [(), (WITHDRAW,), (CANCEL,), (CANCEL, WITHDRAW)],
    ids=["booked", "withdrawn-after-booking", "booking-cancelled", "cancelled-then-withdrawn"],
)
def test_the_destination_sees_the_case_from_the_travel_booking_whatever_follows(
    app: App, api: TestClient, after: tuple[tuple[str, Any, dict[str, str]], ...]
) -> None:
    case_id = walk(app, "travel_documents_ready")
    assert_unknown(app, api, "kyiv", case_id)
    booked_at = app.clock.now()
    resume(app, case_id, "book_travel", "travel_booked")
    for trigger, actor, payload in after:
        app.transitions.fire(case_id, trigger, actor, payload)
    assert_sees(app, api, "kyiv", case_id)
    assert_sees(app, api, "tallinn", case_id)
    assert_unknown(app, api, "riga", case_id)
    with app.db.connect() as conn:
        assert SqlCaseRepository(conn).get(case_id).shared_at == booked_at  # type: ignore[union-attr]


def test_a_handed_over_case_stays_seen_by_both_offices_and_shared_since_its_booking(
    app: App, api: TestClient
) -> None:
    case_id = walk(app, "travel_booked")
    booked_at = app.clock.now()
    app.clock.advance(days=3)  # type: ignore[attr-defined]
    resume(app, case_id, "confirm_departure", "handed_over")  # the sharing time stays
    assert_sees(app, api, "kyiv", case_id)
    assert_sees(app, api, "tallinn", case_id)
    with app.db.connect() as conn:
        case = SqlCaseRepository(conn).get(case_id)
    assert case is not None and (case.owner_office, case.shared_at) == ("kyiv", booked_at)


def test_a_handover_received_from_another_deployment_is_shared_from_its_arrival(
    app: App, api: TestClient
) -> None:
    with app.db.begin() as conn:  # Tallinn is served by another deployment
        conn.execute(
            update(tb.offices).where(tb.offices.c.code == "tallinn").values(webhook_url="https://x.example")
        )
    case_id = str(uuid.uuid4())
    document = {
        "type": "avrr.handover.v1",
        "event_id": str(uuid.uuid4()),
        "case_id": case_id,
        "case_ref": "C-TEST",
        "origin_office": "tallinn",
        "destination_office": "kyiv",
        "language": "uk",
        "journey": {"departure_on": "2026-11-20", "route": "TLL-WAW-KBP"},
        "arrived_on": "2026-11-21",
        "household": [{"id": str(uuid.uuid4()), "phone": None, "email": None, **m} for m in HOUSEHOLD],
    }
    HandoverInbox(app.uow, app.transitions, app.clock).receive("delivery-1", json.dumps(document).encode())
    with app.db.connect() as conn:
        assert SqlCaseRepository(conn).get(case_id).shared_at == app.clock.now()  # type: ignore[union-attr]
    assert_sees(app, api, "kyiv", case_id)
    assert_unknown(app, api, "riga", case_id)


# -- the lifecycle table -------------------------------------------------------------------------


def _unshared_states() -> set[str]:
    """The states a case reaches from registration without passing a sharing transition."""
    reached, frontier = {LIFECYCLE.initial}, [LIFECYCLE.initial]
    while frontier:
        state = frontier.pop()
        for source, t, target in LIFECYCLE.edges():
            if source == state and not t.shares and target not in reached:
                reached.add(target)
                frontier.append(target)
    return reached


def test_the_destination_has_nothing_to_do_with_a_case_before_it_is_shared() -> None:
    """Nothing the destination may fire, and no task for it, can come before a case is shared
    with it: the sharing point is the first time the destination takes part. A notice to it may
    follow an unshared state (a withdrawal, from before or after the booking): the workers drop
    it while the case is unshared (tests/integration/test_effects.py)."""
    unshared = _unshared_states()
    assert {"inquiry", "rejected", "withdrawn", "travel_documents_ready"} <= unshared
    assert "travel_booked" not in unshared
    for source, t, _ in LIFECYCLE.edges():
        if source not in unshared or t.shares:
            continue
        assert DESTINATION not in t.sides, t.trigger
        for event in t.events:
            # A notice is dropped while the case is unshared; closing tasks the destination
            # cannot have yet (none is made before the booking) does nothing.
            allowed = (NOTIFY_OFFICE, CLOSE_TASKS)
            assert all(e.side != DESTINATION or e.kind in allowed for e in effects_of(event)), t.trigger
    # send_handover shares again a case a redirect unshared (its new office had nothing to act on).
    assert {t.trigger for t in LIFECYCLE.transitions if t.shares} == {
        "book_travel",
        "rebook_travel",
        "receive_handover",
        "send_handover",
    }


# -- the migration -------------------------------------------------------------------------------


def test_the_migration_shares_the_cases_already_booked_or_received(empty_url: str) -> None:
    upgrade(empty_url, "0009")
    db = make_engine(empty_url)
    created = datetime(2026, 11, 1, tzinfo=UTC)
    booked = datetime(2026, 11, 10, 8, 30, tzinfo=UTC)
    rebooked = datetime(2026, 11, 20, tzinfo=UTC)
    # state, the triggers in its history (each a day after the last), state entered at
    cases = {
        "inquiry": ("inquiry", ["register_inquiry"]),
        "rejected": ("rejected", ["register_inquiry", "submit_application", "reject_return"]),
        "withdrawn-early": ("withdrawn", ["register_inquiry", "withdraw"]),
        "withdrawn-late": ("withdrawn", ["register_inquiry", "book_travel", "rebook_travel", "withdraw"]),
        "cancelled": ("travel_documents_ready", ["register_inquiry", "book_travel", "cancel_booking"]),
        "received": ("handed_over", ["receive_handover", "accept_handover"]),
        "no-history": ("monitoring", []),
    }
    ids = {name: str(uuid.uuid4()) for name in cases}
    at = {"book_travel": booked, "rebook_travel": rebooked, "receive_handover": booked}
    with db.begin() as conn:
        for code in ("tallinn", "kyiv"):
            conn.execute(tb.offices.insert().values(code=code, name=code, country="EE"))
        for name, (state, triggers) in cases.items():
            row = case_row(
                ids[name], created, state=state, version=max(len(triggers), 1), state_entered_at=rebooked
            )
            conn.execute(tb.cases.insert().values(row))
            for version, trigger in enumerate(triggers, 1):
                conn.execute(
                    tb.case_history.insert().values(
                        case_id=ids[name],
                        version=version,
                        trigger=trigger,
                        to_state=state,
                        actor_id="someone",
                        payload={},
                        lifecycle_version="2026.1",
                        occurred_at=at.get(trigger, created),
                    )
                )
    upgrade(empty_url)
    expected = {
        "inquiry": None,
        "rejected": None,
        "withdrawn-early": None,
        "withdrawn-late": booked,  # the first booking, not the rebooking
        "cancelled": booked,
        "received": booked,
        "no-history": rebooked,  # a state only a shared case reaches: since it entered it
    }
    c = tb.cases.c
    with db.connect() as conn:
        got = dict(conn.execute(select(c.id, c.shared_at)).all())
    assert {name: got[case_id] for name, case_id in ids.items()} == expected
    db.dispose()
    downgrade(empty_url, "0009")
    upgrade(empty_url)  # down and up again
    db = make_engine(empty_url)
    with db.begin() as conn:
        assert dict(conn.execute(select(c.id, c.shared_at)).all()) == got
        conn.execute(update(tb.cases).where(c.id == ids["no-history"]).values(state="closed"))
    with db.connect() as conn:  # the case counts' triggers are still on ``cases``
        k = tb.case_counts.c
        closed = conn.scalar(select(func.sum(k.cases)).where(k.state == "closed"))
    assert closed == 1
    db.dispose()
