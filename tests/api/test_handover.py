"""POST /handover/inbound: signed deliveries from another deployment, on SQLite and PostgreSQL.

The app under test plays one deployment: Kyiv's, receiving Tallinn's package, or Tallinn's,
receiving Kyiv's decision. The other office is configured with a webhook URL (another
deployment's); every refusal is checked to change nothing.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from config.settings import Settings
from tests.conftest import make_app
from tests.support import FixedClock, advance_to, snapshot_tables
from workflow.adapters import tables as tb
from workflow.adapters.channels.webhook import sign
from workflow.adapters.notices import SqlFacts
from workflow.adapters.tokens import SqlTokens
from workflow.api.app import create_app
from workflow.bootstrap import App
from workflow.demo import HOUSEHOLD
from workflow.domain.actors import Role
from workflow.service_layer.effects import Job
from workflow.service_layer.handover import HandoverInbox

SECRET = "a-handover-secret-the-two-deployments-share"
INBOUND = "/handover/inbound"
ELSEWHERE = "https://other-deployment.example.org/handover/inbound"


def settings_for(app: App) -> Settings:
    return Settings(
        database_url=app.db.url.render_as_string(hide_password=False),
        environment="test",
        secret_key="x" * 40,
        handover_secret=SECRET,  # type: ignore[arg-type]
    )


@pytest.fixture
def client(app: App) -> Iterator[TestClient]:
    with TestClient(create_app(app, settings_for(app))) as running:
        yield running


def served_elsewhere(app: App, *offices: str) -> None:
    with app.db.begin() as conn:
        for office in offices:
            conn.execute(update(tb.offices).where(tb.offices.c.code == office).values(webhook_url=ELSEWHERE))


def bearer(app: App, office: str, role: Role = Role.CASEWORKER) -> dict[str, str]:
    token, _ = SqlTokens(app.db).create(
        "t", f"{office}-{role.value}", office, [role], timedelta(days=1), app.clock.now()
    )
    return {"Authorization": f"Bearer {token}"}


def signed(
    app: App, body: bytes, key: str | None = "delivery-1", secret: str = SECRET, skew: float = 0
) -> dict[str, str]:
    timestamp = str(int(app.clock.now().timestamp() + skew))
    headers = {"X-AVRR-Timestamp": timestamp, "X-AVRR-Signature": sign(secret, timestamp, body, key or "")}
    return headers | ({"Idempotency-Key": key} if key is not None else {})


def package(case_id: str | None = None, **overrides: Any) -> dict[str, Any]:
    """A package as workflow/adapters/notices.py builds it."""
    return {
        "type": "avrr.handover.v1",
        "event_id": str(uuid.uuid4()),
        "case_id": case_id or str(uuid.uuid4()),
        "case_ref": "C-TEST",
        "origin_office": "tallinn",
        "destination_office": "kyiv",
        "language": "uk",
        "journey": {"departure_on": "2026-11-20", "route": "TLL-WAW-KBP"},
        "arrived_on": "2026-11-21",
        "household": [{"id": str(uuid.uuid4()), "phone": None, "email": None, **m} for m in HOUSEHOLD],
    } | overrides


def decision(case_id: str, verdict: str = "accepted", **overrides: Any) -> dict[str, Any]:
    return {
        "type": "avrr.handover.decision.v1",
        "event_id": str(uuid.uuid4()),
        "case_id": case_id,
        "from_office": "kyiv",
        "to_office": "tallinn",
        "decision": verdict,
    } | overrides


def post(client: TestClient, app: App, document: Any, key: str | None = "delivery-1", **sig: Any) -> Any:
    body = json.dumps(document).encode() if not isinstance(document, bytes) else document
    return client.post(INBOUND, content=body, headers=signed(app, body, key, **sig))


def problem(response: Any) -> tuple[int, str]:
    return response.status_code, response.json()["type"].removeprefix("/problems/")


def inbound_rows(app: App) -> list[tuple[Any, ...]]:
    with app.db.connect() as conn:
        return [tuple(r) for r in conn.execute(select(tb.inbound_deliveries))]


# -- a package arriving at the destination's deployment ---------------------------------------


def test_a_signed_package_opens_the_case_awaiting_the_destination_staff(app: App, client: TestClient) -> None:
    served_elsewhere(app, "tallinn")
    document = package()
    case_id = document["case_id"]

    response = post(client, app, document)

    assert response.status_code == 200
    assert response.json() == {
        "idempotency_key": "delivery-1",
        "kind": "handover_package",
        "case_id": case_id,
        "from_office": "tallinn",
        "received_at": app.clock.now().isoformat(),
    }
    kyiv = bearer(app, "kyiv")
    case = client.get(f"/cases/{case_id}", headers=kyiv).json()
    assert (case["state"], case["origin_office"], case["destination_office"]) == (
        "handover_pending",
        "tallinn",
        "kyiv",
    )
    assert case["owner_office"] == "tallinn"  # until Kyiv accepts
    assert set(case["triggers"]) == {"accept_handover", "refuse_handover"}
    assert [m["id"] for m in case["members"]] == [m["id"] for m in document["household"]]
    assert [t["name"] for t in case["timers"]] == ["handover_acknowledgement"]
    (entry,) = client.get(f"/cases/{case_id}/history", headers=kyiv).json()
    assert (entry["trigger"], entry["actor_id"], entry["to_state"]) == (
        "receive_handover",
        "system:handover:tallinn",
        "handover_pending",
    )
    assert entry["payload"]["origin_office"] == "tallinn"
    assert "full_name" not in json.dumps(entry["payload"])  # personal fields stay out of history
    assert client.get(f"/cases/{case_id}", headers=bearer(app, "riga")).status_code == 404
    with app.db.connect() as conn:
        events = list(conn.scalars(select(tb.outbox.c.event_type).where(tb.outbox.c.case_id == case_id)))
    assert events == ["HandoverReceived"]
    assert [row[:4] for row in inbound_rows(app)] == [("delivery-1", "handover_package", case_id, "tallinn")]


def test_the_destination_staff_accept_the_received_case_through_the_transition_route(
    app: App, client: TestClient
) -> None:
    served_elsewhere(app, "tallinn")
    case_id = post(client, app, package()).json()["case_id"]

    response = client.post(
        f"/cases/{case_id}/transitions/accept_handover",
        headers={**bearer(app, "kyiv"), "If-Match": '"1"'},
    )

    assert response.status_code == 200 and response.json()["to_state"] == "handed_over"
    with app.db.connect() as conn:
        events = list(conn.scalars(select(tb.outbox.c.event_type).where(tb.outbox.c.case_id == case_id)))
        owner = conn.scalar(select(tb.cases.c.owner_office).where(tb.cases.c.id == case_id))
    assert events == ["HandoverReceived", "HandoverAccepted"] and owner == "kyiv"


def test_a_redelivery_answers_as_the_first_time_and_changes_nothing(app: App, client: TestClient) -> None:
    served_elsewhere(app, "tallinn")
    document = package()
    first = post(client, app, document)
    before = snapshot_tables(app.db)
    app.clock.advance(seconds=30)  # type: ignore[attr-defined]

    again = post(client, app, document)

    assert again.status_code == first.status_code == 200
    assert again.json() == first.json()
    assert again.headers["idempotency-replayed"] == "true" and "idempotency-replayed" not in first.headers
    after = snapshot_tables(app.db)
    after.pop("access_log"), before.pop("access_log")
    assert after == before


def test_the_same_key_with_another_body_is_refused_and_changes_nothing(app: App, client: TestClient) -> None:
    served_elsewhere(app, "tallinn")
    post(client, app, package())
    before = snapshot_tables(app.db)

    response = post(client, app, package())

    assert problem(response) == (409, "idempotency_key_reused")
    assert snapshot_tables(app.db)["cases"] == before["cases"]
    assert len(inbound_rows(app)) == 1


def test_a_package_for_a_case_that_exists_here_is_refused(app: App, client: TestClient) -> None:
    served_elsewhere(app, "tallinn")
    case_id = post(client, app, package()).json()["case_id"]

    response = post(client, app, package(case_id), key="delivery-2")

    assert problem(response) == (409, "transition_not_allowed")
    assert len(inbound_rows(app)) == 1


def test_a_handover_sent_again_after_a_refusal_is_pending_here_again(app: App, client: TestClient) -> None:
    """Kyiv refused; Tallinn fixed the journey and the household and sent the handover again (a
    new event, a new key). Kyiv's copy, left in arrived by the refusal, is pending again with the
    new journey and household, and Kyiv's staff can accept it."""
    served_elsewhere(app, "tallinn")
    first = package()
    case_id = post(client, app, first).json()["case_id"]
    kyiv = bearer(app, "kyiv")
    refused = client.post(
        f"/cases/{case_id}/transitions/refuse_handover",
        headers={**kyiv, "If-Match": '"1"'},
        json={"reason": "the route is not the one agreed"},
    )
    assert refused.status_code == 200 and refused.json()["to_state"] == "arrived"

    again = package(case_id, journey={"departure_on": "2026-11-20", "route": "TLL-IST-KBP"})
    # Tallinn also corrected the principal's phone and took a member off the household.
    again["household"] = [dict(m) for m in first["household"][:-1]]
    again["household"][0]["phone"] = "+3725550199"
    response = post(client, app, again, key="delivery-2")

    assert response.status_code == 200, response.json()
    case = client.get(f"/cases/{case_id}", headers=kyiv).json()
    assert (case["state"], case["owner_office"]) == ("handover_pending", "tallinn")
    with app.db.connect() as conn:
        assert conn.scalar(select(tb.cases.c.route).where(tb.cases.c.id == case_id)) == "TLL-IST-KBP"
    household = client.get(f"/cases/{case_id}/household", headers=kyiv).json()
    members = household["members"] if isinstance(household, dict) else household
    assert [m["id"] for m in members] == [m["id"] for m in first["household"][:-1]]
    assert members[0]["phone"] == "+3725550199"
    assert [t["name"] for t in case["timers"]] == ["handover_acknowledgement"]
    history = client.get(f"/cases/{case_id}/history", headers=kyiv).json()
    triggers = [h["trigger"] for h in history]
    assert triggers == ["receive_handover", "refuse_handover", "receive_handover_again"]
    accepted = client.post(
        f"/cases/{case_id}/transitions/accept_handover", headers={**kyiv, "If-Match": '"3"'}
    )
    assert accepted.status_code == 200 and accepted.json()["to_state"] == "handed_over"


@pytest.mark.postgres
def test_concurrent_deliveries_of_one_key_open_one_case_and_answer_alike(pg_app: App) -> None:
    served_elsewhere(pg_app, "tallinn")
    body = json.dumps(package()).encode()
    inbox = HandoverInbox(pg_app.uow, pg_app.transitions, pg_app.clock)
    start = threading.Barrier(8)

    def deliver(_: int) -> Any:
        start.wait()
        return inbox.receive("the-same-key", body)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(deliver, range(8)))

    assert len({json.dumps(r.to_json()) for r in results}) == 1
    assert sorted(r.replayed for r in results) == [False] + [True] * 7
    with pg_app.db.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(tb.cases)) == 1
        assert conn.scalar(select(func.count()).select_from(tb.case_history)) == 1
    assert len(inbound_rows(pg_app)) == 1


# -- refusals before anything is read: the signature ------------------------------------------


def _retimed(headers: dict[str, str], timestamp: str) -> dict[str, str]:
    return headers | {"X-AVRR-Timestamp": timestamp}


BAD_SIGNATURES: dict[str, Any] = {
    "no signature headers": lambda app, body: {"Idempotency-Key": "k"},
    "another secret": lambda app, body: signed(app, body, secret="not-the-shared-secret"),
    "body changed after signing": lambda app, body: signed(app, body.replace(b"kyiv", b"riga")),
    "timestamp changed after signing": lambda app, body: _retimed(
        signed(app, body), str(int(app.clock.now().timestamp()) + 1)
    ),
    "not a v1 signature": lambda app, body: (
        signed(app, body) | {"X-AVRR-Signature": signed(app, body)["X-AVRR-Signature"][3:]}
    ),
    "timestamp not a number": lambda app, body: _retimed(signed(app, body), "yesterday"),
    "stale timestamp": lambda app, body: signed(app, body, skew=-301),
    "timestamp from the future": lambda app, body: signed(app, body, skew=301),
}


@pytest.mark.parametrize("what", list(BAD_SIGNATURES))
def test_a_bad_or_stale_signature_answers_401_and_changes_nothing(
    app: App, client: TestClient, what: str
) -> None:
    served_elsewhere(app, "tallinn")
    body = json.dumps(package()).encode()
    headers = BAD_SIGNATURES[what](app, body)
    before = snapshot_tables(app.db)

    response = client.post(INBOUND, content=body, headers=headers)

    assert problem(response) == (401, "bad_signature")
    after = snapshot_tables(app.db)
    refusals = [row for row in after.pop("access_log") if "bad_signature" in row]
    before.pop("access_log")
    assert after == before and len(refusals) == 1


def test_without_a_handover_secret_nothing_is_accepted(app: App) -> None:
    settings = settings_for(app).model_copy(update={"handover_secret": None})
    body = json.dumps(package()).encode()
    with TestClient(create_app(app, settings)) as client:
        response = client.post(INBOUND, content=body, headers=signed(app, body))
    assert problem(response) == (401, "bad_signature")


def test_the_signature_is_checked_before_the_idempotency_key(app: App, client: TestClient) -> None:
    body = json.dumps(package()).encode()
    unsigned = client.post(INBOUND, content=body)
    missing_key = post(client, app, package(), key=None)

    assert problem(unsigned) == (401, "bad_signature")
    assert problem(missing_key) == (422, "invalid_payload")
    assert "Idempotency-Key" in missing_key.json()["detail"]


# -- signed, but not a delivery this deployment takes -----------------------------------------


def _without_principal() -> dict[str, Any]:
    document = package()
    document["household"] = [m for m in document["household"] if m["relationship"] != "principal"]
    return document


MALFORMED: dict[str, Any] = {
    "not JSON": b"{not json",
    "a JSON array": [package()],
    "an unknown document type": package(type="avrr.handover.v9"),
    "no case id": {k: v for k, v in package().items() if k != "case_id"},
    "a case id that is not a UUID": package(case_id="../../cases"),
    "no principal applicant": _without_principal(),
    "an unknown language": package(language="fr"),
    "a member without an id": package(household=[{**HOUSEHOLD[0]}]),
    "a date that is not a date": package(arrived_on="21.11.2026"),
    "an unknown member field": package(household=[{"id": "m-1", **HOUSEHOLD[0], "asylum": "x"}]),
    "a decision that is neither": decision(str(uuid.uuid4()), verdict="maybe"),
}


@pytest.mark.parametrize("what", list(MALFORMED))
def test_a_malformed_document_answers_422_and_changes_nothing(
    app: App, client: TestClient, what: str
) -> None:
    served_elsewhere(app, "tallinn")
    before = snapshot_tables(app.db)

    response = post(client, app, MALFORMED[what])

    if what == "an unknown member field":  # ignored, like any field a newer sender adds
        assert response.status_code == 200
        return
    assert problem(response) == (422, "invalid_payload"), response.json()
    after = snapshot_tables(app.db)
    after.pop("access_log"), before.pop("access_log")
    assert after == before
    assert "Demo Principal" not in response.text  # inputs are never echoed


def test_a_package_from_an_office_this_deployment_serves_is_refused(app: App, client: TestClient) -> None:
    # Tallinn has no webhook URL here: it is one of this deployment's offices, which never
    # speak through the signed channel.
    assert problem(post(client, app, package())) == (403, "permission_denied")
    assert inbound_rows(app) == []


def test_a_package_for_an_office_another_deployment_serves_is_refused(app: App, client: TestClient) -> None:
    served_elsewhere(app, "tallinn", "kyiv")
    assert problem(post(client, app, package())) == (422, "invalid_payload")
    assert problem(post(client, app, package(destination_office="nowhere"), key="k2"))[1] == "invalid_payload"
    assert inbound_rows(app) == []


# -- the decision arriving back at the origin's deployment ------------------------------------


def test_an_acceptance_fires_accept_handover_as_the_destination_offices_automation(
    app: App, client: TestClient
) -> None:
    served_elsewhere(app, "kyiv")
    case_id = advance_to(app, "handover_pending")
    document = decision(case_id)

    response = post(client, app, document)

    assert response.status_code == 200 and response.json()["kind"] == "handover_decision"
    history = client.get(f"/cases/{case_id}/history", headers=bearer(app, "tallinn")).json()
    assert (history[-1]["trigger"], history[-1]["actor_id"], history[-1]["to_state"]) == (
        "accept_handover",
        "system:handover:kyiv",
        "handed_over",
    )
    with app.db.connect() as conn:
        row = conn.execute(
            select(tb.case_history)
            .where(tb.case_history.c.case_id == case_id)
            .order_by(tb.case_history.c.version.desc())
        ).first()
        owner = conn.scalar(select(tb.cases.c.owner_office).where(tb.cases.c.id == case_id))
    assert row is not None and row.actor_office == "kyiv" and owner == "kyiv"
    assert post(client, app, document).json() == response.json()  # the same key again: nothing new


def test_a_refusal_fires_refuse_handover_with_the_destinations_reason(app: App, client: TestClient) -> None:
    served_elsewhere(app, "kyiv")
    case_id = advance_to(app, "handover_pending")

    response = post(client, app, decision(case_id, "refused", reason="no reintegration slot until March"))

    assert response.status_code == 200
    with app.db.connect() as conn:
        last = conn.execute(
            select(tb.case_history.c.trigger, tb.case_history.c.reason, tb.cases.c.state)
            .join(tb.cases, tb.cases.c.id == tb.case_history.c.case_id)
            .where(tb.case_history.c.case_id == case_id)
            .order_by(tb.case_history.c.version.desc())
        ).first()
    assert tuple(last) == ("refuse_handover", "no reintegration slot until March", "arrived")  # type: ignore[arg-type]


def test_a_refusal_without_a_reason_is_refused(app: App, client: TestClient) -> None:
    served_elsewhere(app, "kyiv")
    case_id = advance_to(app, "handover_pending")
    assert problem(post(client, app, decision(case_id, "refused"))) == (422, "invalid_payload")
    assert inbound_rows(app) == []


def test_the_origins_own_staff_cannot_fake_the_acceptance(app: App, client: TestClient) -> None:
    served_elsewhere(app, "kyiv", "riga")
    case_id = advance_to(app, "handover_pending")
    before = snapshot_tables(app.db)["cases"]

    by_staff = {
        role: client.post(
            f"/cases/{case_id}/transitions/accept_handover",
            headers={**bearer(app, "tallinn", role), "If-Match": '"9"'},
        )
        for role in Role
    }
    # Signed, but in the name of an office that is not the case's destination.
    as_origin = post(client, app, decision(case_id, from_office="tallinn"), key="as-origin")
    as_stranger = post(client, app, decision(case_id, from_office="riga"), key="as-stranger")

    assert {role: problem(r) for role, r in by_staff.items()} == {
        role: (403, "permission_denied") for role in Role
    }
    assert problem(as_origin) == (403, "permission_denied")
    assert problem(as_stranger) == (404, "unknown_case")
    assert snapshot_tables(app.db)["cases"] == before and inbound_rows(app) == []


def test_a_decision_for_a_case_no_longer_pending_is_refused(app: App, client: TestClient) -> None:
    served_elsewhere(app, "kyiv")
    case_id = advance_to(app, "handover_pending")
    assert post(client, app, decision(case_id)).status_code == 200

    late = post(client, app, decision(case_id, "refused", reason="too late"), key="delivery-2")
    unknown = post(client, app, decision(str(uuid.uuid4())), key="delivery-3")

    assert problem(late) == (409, "transition_not_allowed")
    assert problem(unknown) == (404, "unknown_case")
    assert len(inbound_rows(app)) == 1


# -- the two ends agree ----------------------------------------------------------------------


def test_the_package_the_origin_builds_opens_the_case_at_the_destination(
    app: App, tmp_path: Path, sqlite_template: Path
) -> None:
    origin_case = advance_to(app, "handover_pending")
    with app.db.connect() as conn:
        event_id = conn.scalar(
            select(tb.outbox.c.event_id).where(
                tb.outbox.c.case_id == origin_case, tb.outbox.c.event_type == "HandoverSent"
            )
        )
    document = SqlFacts(app.db).handover_package(Job(event_id, "HandoverSent", origin_case, "x"))
    (tmp_path / "kyiv.sqlite3").write_bytes(sqlite_template.read_bytes())
    kyiv = make_app(f"sqlite:///{tmp_path / 'kyiv.sqlite3'}", FixedClock())
    served_elsewhere(kyiv, "tallinn")
    try:
        with TestClient(create_app(kyiv, settings_for(kyiv))) as destination:
            response = post(destination, kyiv, document, key=f"{event_id}/deliver_handover")
        assert response.status_code == 200, response.json()
        with kyiv.db.connect() as conn:
            case = conn.execute(select(tb.cases).where(tb.cases.c.id == origin_case)).one()
            members = conn.scalar(select(func.count()).where(tb.household_members.c.case_id == origin_case))
        with app.db.connect() as conn:
            sent = conn.execute(select(tb.cases).where(tb.cases.c.id == origin_case)).one()
        assert case.state == "handover_pending"
        assert (case.arrived_on, case.departure_on, case.route, case.language) == (
            sent.arrived_on,
            sent.departure_on,
            sent.route,
            sent.language,
        )
        assert members == len(HOUSEHOLD)
    finally:
        kyiv.db.dispose()
