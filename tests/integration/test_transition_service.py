"""The transition service on SQLite and PostgreSQL: what a fire writes, and what a refusal leaves."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.exc import DBAPIError

from tests.support import REGISTRATION, advance_to, register, snapshot_tables
from workflow.adapters import tables as tb
from workflow.bootstrap import App
from workflow.demo import (
    HOUSEHOLD,
    KBP_CASEWORKER,
    KBP_FINANCE,
    KBP_FINANCE_LEAD,
    TLL_APPROVER,
    TLL_CASEWORKER,
    TLL_TRAVEL,
)
from workflow.domain.actors import Actor, Role
from workflow.domain.errors import (
    DomainError,
    GuardFailed,
    IdempotencyKeyReused,
    InvalidPayload,
    PermissionDenied,
    TransitionNotAllowed,
    UnknownCase,
    UnknownTrigger,
    VersionConflict,
)
from workflow.domain.lifecycle import LIFECYCLE

ELIGIBLE = {
    "nationality": "UA",
    "consent_signed_on": "2026-11-01",
    "travel_document": "present",
    "asylum_status": "withdrawn",
}


def _rows(app: App, table: Any, case_id: str) -> list[Any]:
    with app.db.connect() as conn:
        return list(conn.execute(select(table).where(table.c.case_id == case_id)).mappings())


def test_create_case_writes_the_case_its_first_history_row_and_its_event(app: App) -> None:
    result = register(app)

    case = app.views.case(result.case_id)
    history = _rows(app, tb.case_history, result.case_id)
    outbox = _rows(app, tb.outbox, result.case_id)
    assert (case["state"], case["version"], case["owner_office"]) == ("inquiry", 1, "tallinn")
    assert case["lifecycle_version"] == LIFECYCLE.version
    assert [m["relationship"] for m in case["members"]] == ["principal", "spouse", "child", "child"]
    assert [(h["version"], h["from_state"], h["to_state"]) for h in history] == [(1, None, "inquiry")]
    assert [(o["event_type"], o["case_version"], o["sent_at"]) for o in outbox] == [
        ("InquiryRegistered", 1, None)
    ]
    assert result.event_ids == (outbox[0]["event_id"],)


def test_history_and_events_hold_no_personal_data(app: App) -> None:
    case_id = advance_to(app, "return_approved")

    stored = str(_rows(app, tb.case_history, case_id)) + str(_rows(app, tb.outbox, case_id))
    for member in HOUSEHOLD:
        for field in ("full_name", "date_of_birth", "phone", "email"):
            if member.get(field):
                assert member[field] not in stored
    assert "'UA'" not in stored  # nationality is kept on the case, not in history


def test_each_fire_appends_one_history_row_and_its_events(app: App) -> None:
    case_id = advance_to(app, "travel_booked")

    history = _rows(app, tb.case_history, case_id)
    outbox = _rows(app, tb.outbox, case_id)
    assert [h["version"] for h in history] == list(range(1, len(history) + 1))
    for h in history:
        expected = LIFECYCLE.by_trigger[h["trigger"]].events
        assert tuple(o["event_type"] for o in outbox if o["case_version"] == h["version"]) == expected
    assert history[-1]["to_state"] == app.views.case(case_id)["state"]


REFUSALS: list[tuple[str, dict[str, Any], type[DomainError]]] = [
    ("unknown case", {"case_id": "no-such-case", "trigger": "submit_application"}, UnknownCase),
    ("unknown trigger", {"trigger": "teleport"}, UnknownTrigger),
    ("not from this state", {"trigger": "confirm_departure", "actor": TLL_TRAVEL}, TransitionNotAllowed),
    ("guard failed", {"trigger": "submit_application"}, GuardFailed),
    ("wrong role", {"trigger": "record_eligibility", "actor": TLL_APPROVER}, PermissionDenied),
    (
        "another office's case is unknown to it",
        {"trigger": "record_eligibility", "actor": Actor.of("riga-cw", "riga", Role.CASEWORKER)},
        UnknownCase,
    ),
    (
        "the right office without the role",
        {"trigger": "approve_return", "actor": TLL_CASEWORKER, "expected_version": 0},
        PermissionDenied,
    ),
    ("stale version", {"trigger": "record_eligibility", "expected_version": 0}, VersionConflict),
    ("junk payload", {"trigger": "record_eligibility", "payload": {"nationality": 7}}, InvalidPayload),
    (
        "unknown field",
        {"trigger": "withdraw", "payload": {"reason": "x", "state": "closed"}},
        InvalidPayload,
    ),
]


@pytest.mark.parametrize(("name", "call", "error"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_a_refused_fire_raises_its_own_error_and_changes_no_row(
    app: App, name: str, call: dict[str, Any], error: type[DomainError]
) -> None:
    case_id = register(app).case_id
    kwargs = {
        "case_id": case_id,
        "actor": TLL_CASEWORKER,
        "payload": ELIGIBLE if call["trigger"] == "record_eligibility" else None,
    } | call
    before = snapshot_tables(app.db)

    with pytest.raises(error) as raised:
        app.transitions.fire(**kwargs)

    assert snapshot_tables(app.db) == before, name
    assert raised.value.code == error.code


def test_transition_not_allowed_names_the_triggers_that_are(app: App) -> None:
    case_id = register(app).case_id
    with pytest.raises(TransitionNotAllowed) as raised:
        app.transitions.fire(case_id, "send_handover", TLL_CASEWORKER, {})
    # The caseworker's own options: what other roles could do is not theirs to learn.
    assert set(raised.value.allowed) == {"record_eligibility", "submit_application", "withdraw"}
    with pytest.raises(TransitionNotAllowed) as raised:
        app.transitions.fire(case_id, "book_travel", TLL_TRAVEL, {})
    assert raised.value.allowed == ()  # nothing in inquiry is the travel officer's


def test_guard_failure_reports_every_reason(app: App) -> None:
    case_id = register(app).case_id
    app.transitions.fire(
        case_id,
        "record_eligibility",
        TLL_CASEWORKER,
        {"nationality": "DE", "expulsion_order": True, "consent_signed_on": "2026-11-01"},
    )
    app.transitions.fire(case_id, "submit_application", TLL_CASEWORKER)
    with pytest.raises(GuardFailed) as raised:
        app.transitions.fire(case_id, "approve_return", TLL_APPROVER)
    reasons = " | ".join(raised.value.reasons)
    assert len(raised.value.reasons) == 3
    assert "EU/EEA" in reasons and "expulsion order" in reasons and "document" in reasons


def test_registration_in_an_unknown_office_is_invalid(app: App) -> None:
    before = snapshot_tables(app.db)
    with pytest.raises(InvalidPayload, match="unknown office"):
        app.transitions.create_case(
            Actor.of("x", "tallinn", Role.CASEWORKER), {**REGISTRATION, "destination_office": "mars"}
        )
    assert snapshot_tables(app.db) == before


def test_registration_by_another_office_is_denied(app: App) -> None:
    with pytest.raises(PermissionDenied):
        app.transitions.create_case(KBP_CASEWORKER, REGISTRATION)


def test_repeated_idempotency_key_returns_the_first_result_and_fires_once(app: App) -> None:
    case_id = register(app).case_id
    first = app.transitions.fire(
        case_id, "record_eligibility", TLL_CASEWORKER, ELIGIBLE, idempotency_key="k-1"
    )
    before = snapshot_tables(app.db)

    again = app.transitions.fire(
        case_id, "record_eligibility", TLL_CASEWORKER, ELIGIBLE, idempotency_key="k-1"
    )

    assert again.replayed and not first.replayed
    assert again.to_json() == first.to_json()
    assert snapshot_tables(app.db) == before


def test_idempotency_key_reused_for_another_request_is_refused(app: App) -> None:
    case_id = register(app).case_id
    app.transitions.fire(case_id, "record_eligibility", TLL_CASEWORKER, ELIGIBLE, idempotency_key="k-2")
    before = snapshot_tables(app.db)
    with pytest.raises(IdempotencyKeyReused):
        app.transitions.fire(
            case_id,
            "record_eligibility",
            TLL_CASEWORKER,
            {**ELIGIBLE, "nationality": "MD"},
            idempotency_key="k-2",
        )
    assert snapshot_tables(app.db) == before


def test_idempotent_case_creation_creates_one_case(app: App) -> None:
    first = app.transitions.create_case(TLL_CASEWORKER, REGISTRATION, idempotency_key="new-1")
    second = app.transitions.create_case(TLL_CASEWORKER, REGISTRATION, idempotency_key="new-1")
    with app.db.connect() as conn:
        assert conn.scalar(select(tb.cases.c.id).where(tb.cases.c.id != first.case_id)) is None
    assert second.case_id == first.case_id and second.replayed


@pytest.mark.parametrize("statement", ["UPDATE case_history SET trigger = 'x'", "DELETE FROM case_history"])
def test_the_database_refuses_to_rewrite_history(app: App, statement: str) -> None:
    register(app)
    with pytest.raises(DBAPIError, match="append-only"), app.db.begin() as conn:
        conn.execute(text(statement))
    with app.db.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM case_history")) == 1


def _tranche(line_id: str, amount: str, kind: str = "in_kind") -> dict[str, str]:
    return {"budget_line_id": line_id, "amount": amount, "currency": "EUR", "vendor": "v", "kind": kind}


def _line(app: App, case_id: str, index: int) -> dict[str, Any]:
    return app.views.case(case_id)["plan"]["lines"][index]


def _request(app: App, case_id: str, line_index: int, amount: str, actor: Actor = KBP_FINANCE) -> str:
    line_id = _line(app, case_id, line_index)["id"]
    app.transitions.fire(case_id, "request_disbursement", actor, _tranche(line_id, amount))
    return str(app.views.case(case_id)["plan"]["disbursements"][-1]["id"])


def _disbursement_row(app: App, disbursement_id: str) -> Any:
    with app.db.connect() as conn:
        d = tb.disbursements
        return conn.execute(select(d).where(d.c.id == disbursement_id)).mappings().one()


def test_whoever_requested_a_disbursement_cannot_approve_it(app: App) -> None:
    case_id = advance_to(app, "plan_approved")
    requested = _request(app, case_id, 0, "10.00")
    before = snapshot_tables(app.db)

    with pytest.raises(GuardFailed, match="four eyes: whoever requested"):
        app.transitions.fire(case_id, "approve_disbursement", KBP_FINANCE, {"disbursement_id": requested})
    assert snapshot_tables(app.db) == before

    app.transitions.fire(case_id, "approve_disbursement", KBP_FINANCE_LEAD, {"disbursement_id": requested})
    row = _disbursement_row(app, requested)
    assert (row["status"], row["requested_by"], row["disbursed_by"]) == (
        "approved",
        KBP_FINANCE.id,
        KBP_FINANCE_LEAD.id,
    )
    assert _line(app, case_id, 0)["disbursed"] == "10.00 EUR"
    assert app.views.case(case_id)["state"] == "disbursing"


def test_approver_of_a_plan_cannot_approve_disbursements_against_it(app: App) -> None:
    case_id = advance_to(app, "plan_approved")
    approver_with_finance_role = Actor(
        TLL_APPROVER.id, "kyiv", frozenset({Role.APPROVER, Role.FINANCE_OFFICER})
    )
    requested = _request(app, case_id, 0, "10.00", KBP_CASEWORKER)

    with pytest.raises(GuardFailed, match="four eyes: the approver of this plan"):
        app.transitions.fire(
            case_id, "approve_disbursement", approver_with_finance_role, {"disbursement_id": requested}
        )
    app.transitions.fire(case_id, "approve_disbursement", KBP_FINANCE, {"disbursement_id": requested})


def test_a_disbursement_beyond_the_budget_line_is_refused(app: App) -> None:
    case_id = advance_to(app, "plan_approved")  # line 2: 700.00 EUR
    approved = _request(app, case_id, 2, "600.00")
    app.transitions.fire(case_id, "approve_disbursement", KBP_FINANCE_LEAD, {"disbursement_id": approved})
    _request(app, case_id, 2, "50.00")  # awaiting approval, yet counted
    before = snapshot_tables(app.db)

    with pytest.raises(GuardFailed, match=r"exceeds the 50\.00 EUR left"):
        _request(app, case_id, 2, "50.01")

    assert snapshot_tables(app.db) == before
    line = _line(app, case_id, 2)
    assert (line["disbursed"], line["requested"], line["remaining"]) == (
        "600.00 EUR",
        "50.00 EUR",
        "50.00 EUR",
    )


def test_a_rejected_request_frees_its_amount_and_keeps_the_reason_out_of_the_payload(app: App) -> None:
    case_id = advance_to(app, "plan_approved")
    requested = _request(app, case_id, 2, "700.00")
    reason = "invoice names the wrong child"
    app.transitions.fire(
        case_id, "reject_disbursement", KBP_FINANCE_LEAD, {"disbursement_id": requested, "reason": reason}
    )

    assert _disbursement_row(app, requested)["status"] == "rejected"
    assert _line(app, case_id, 2)["remaining"] == "700.00 EUR"
    last = app.views.history(case_id)[-1]
    assert (last["trigger"], last["reason"], last["payload"]) == (
        "reject_disbursement",
        reason,
        {"disbursement_id": requested},
    )
    assert app.views.case(case_id)["state"] == "plan_approved"  # no money has moved


def test_an_approval_records_the_tranche_in_history_and_a_receipt_settles_it(app: App) -> None:
    case_id = advance_to(app, "plan_approved")
    requested = _request(app, case_id, 0, "1450.00")
    app.transitions.fire(case_id, "approve_disbursement", KBP_FINANCE_LEAD, {"disbursement_id": requested})
    approval = app.views.history(case_id)[-1]
    assert approval["payload"] == {
        "disbursement_id": requested,
        "budget_line_id": _line(app, case_id, 0)["id"],
        "amount": "1450.00",
        "currency": "EUR",
    }
    with pytest.raises(GuardFailed, match="no receipt yet"):
        app.transitions.fire(case_id, "complete_disbursement", KBP_FINANCE)

    receipt = {"disbursement_id": requested, "receipt_ref": "R-1001"}
    app.transitions.fire(case_id, "record_receipt", KBP_CASEWORKER, receipt)
    row = _disbursement_row(app, requested)
    assert (row["status"], row["receipt_ref"], row["receipt_recorded_by"]) == (
        "receipted",
        "R-1001",
        KBP_CASEWORKER.id,
    )
    app.transitions.fire(case_id, "complete_disbursement", KBP_FINANCE)
    assert app.views.case(case_id)["state"] == "monitoring"


def test_cash_is_refused_while_the_programme_keeps_it_off(app: App) -> None:
    case_id = advance_to(app, "plan_approved")
    line = _line(app, case_id, 0)
    with pytest.raises(GuardFailed, match="cash"):
        app.transitions.fire(
            case_id, "request_disbursement", KBP_FINANCE, _tranche(line["id"], "10.00", "cash")
        )


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE disbursements SET disbursed_by = requested_by",  # four eyes
        "UPDATE disbursements SET receipt_ref = NULL",  # a receipted tranche has its receipt
        "UPDATE disbursements SET status = 'paid'",
    ],
)
def test_the_database_refuses_disbursements_that_break_the_rules(app: App, statement: str) -> None:
    case_id = advance_to(app, "plan_approved")
    requested = _request(app, case_id, 0, "10.00")
    app.transitions.fire(case_id, "approve_disbursement", KBP_FINANCE_LEAD, {"disbursement_id": requested})
    app.transitions.fire(
        case_id, "record_receipt", KBP_FINANCE, {"disbursement_id": requested, "receipt_ref": "R"}
    )
    with pytest.raises(DBAPIError), app.db.begin() as conn:
        conn.execute(text(statement))


def test_moving_on_cancels_the_deadlines_of_the_state_left(app: App) -> None:
    case_id = advance_to(app, "handover_pending")
    assert [t["name"] for t in app.views.case(case_id)["timers"]] == ["handover_acknowledgement"]

    app.transitions.fire(case_id, "accept_handover", KBP_CASEWORKER)

    assert [t["name"] for t in app.views.case(case_id)["timers"]] == ["returnee_contact"]
    statuses = {t["name"]: t["status"] for t in _rows(app, tb.timers, case_id)}
    assert statuses == {
        "departure_reminder": "cancelled",  # by confirm_departure, earlier in the story
        "handover_acknowledgement": "cancelled",
        "returnee_contact": "pending",
    }


def test_accepting_the_handover_makes_the_destination_the_owner(app: App) -> None:
    case_id = advance_to(app, "handed_over")
    assert app.views.case(case_id)["owner_office"] == "kyiv"


def test_plan_lines_keep_the_plan_order_however_the_rows_are_stored(app: App) -> None:
    # An UPDATE moves a row on PostgreSQL; without an explicit order the lines came back shuffled.
    for _ in range(8):
        case_id = advance_to(app, "closed")
    categories = [line["category"] for line in app.views.case(case_id)["plan"]["lines"]]
    assert categories == ["business", "business", "education", "education"]


def test_a_payload_with_non_string_keys_is_invalid_even_with_an_idempotency_key(app: App) -> None:
    case_id = register(app).case_id
    with pytest.raises(InvalidPayload):
        app.transitions.fire(
            case_id, "withdraw", TLL_CASEWORKER, {1: "x", "reason": "r"}, idempotency_key="odd-keys"
        )


def test_free_text_and_legal_status_stay_out_of_history_payloads(app: App) -> None:
    case_id = register(app).case_id
    app.transitions.fire(
        case_id, "record_eligibility", TLL_CASEWORKER, ELIGIBLE | {"asylum_status": "withdrawn"}
    )
    note = "Olena Kovalenko +380 44 123 4567 is ill"
    app.transitions.fire(case_id, "withdraw", TLL_CASEWORKER, {"reason": note})

    history = _rows(app, tb.case_history, case_id)
    assert history[-1]["reason"] == note  # once, in its own column, for the staff who read it
    assert note not in str([h["payload"] for h in history])
    assert "withdrawn" not in str(history[1]["payload"]) and "asylum" not in str(history[1]["payload"])
    assert note not in str(_rows(app, tb.outbox, case_id))


@pytest.mark.parametrize(
    "change",
    [
        {"members": [{**HOUSEHOLD[0], "full_name": "x" * 201}, *HOUSEHOLD[1:]]},
        {"channel": "walk_in", "idempotency_key": "k" * 201},
        {"actor": Actor.of("a" * 121, "tallinn", Role.CASEWORKER)},
    ],
    ids=["long name", "long key", "long actor id"],
)
def test_values_wider_than_their_columns_are_invalid_on_every_backend(
    app: App, change: dict[str, Any]
) -> None:
    change = dict(change)  # the parameter is shared by both databases' runs
    actor = change.pop("actor", TLL_CASEWORKER)
    key = change.pop("idempotency_key", None)
    before = snapshot_tables(app.db)
    with pytest.raises(InvalidPayload):
        app.transitions.create_case(actor, {**REGISTRATION, **change}, idempotency_key=key)
    assert snapshot_tables(app.db) == before


def test_times_are_stored_and_read_back_as_the_same_instant_in_utc(app: App, clock: Any) -> None:
    from datetime import UTC, datetime, timedelta, timezone

    clock.current = datetime(2026, 11, 28, 11, 0, tzinfo=timezone(timedelta(hours=2)))
    case_id = register(app).case_id

    (entry,) = app.views.history(case_id)
    assert datetime.fromisoformat(entry["occurred_at"]) == datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
    assert datetime.fromisoformat(entry["occurred_at"]).utcoffset() == timedelta(0)


def test_the_request_id_is_kept_in_history(app: App) -> None:
    result = app.transitions.create_case(TLL_CASEWORKER, REGISTRATION, request_id="req-42")
    assert _rows(app, tb.case_history, result.case_id)[0]["request_id"] == "req-42"


def test_a_replay_does_not_answer_a_caller_who_lost_the_role(app: App) -> None:
    case_id = register(app).case_id
    app.transitions.fire(case_id, "record_eligibility", TLL_CASEWORKER, ELIGIBLE, idempotency_key="k-r")
    demoted = Actor(TLL_CASEWORKER.id, "tallinn", frozenset())
    with pytest.raises(IdempotencyKeyReused):
        app.transitions.fire(case_id, "record_eligibility", demoted, ELIGIBLE, idempotency_key="k-r")


# -- a handover nobody takes ----------------------------------------------------------------------

RIGA_CASEWORKER = Actor.of("riga-caseworker", "riga", Role.CASEWORKER)


def test_a_refused_handover_goes_to_another_destination_office(app: App) -> None:
    """Kyiv refused (or the family settles elsewhere): the origin names another destination, which
    sees the case and gets the next handover; Kyiv no longer sees it."""
    case_id = advance_to(app, "arrived")
    redirect = {"destination_office": "riga", "reason": "the family settles in Latvia"}
    app.transitions.fire(case_id, "redirect_handover", TLL_CASEWORKER, redirect)
    with pytest.raises(UnknownCase):  # named, but with nothing to act on yet: need to know
        app.views.case(case_id, RIGA_CASEWORKER)
    app.transitions.fire(case_id, "send_handover", TLL_CASEWORKER)
    case = app.views.case(case_id, RIGA_CASEWORKER)
    assert (case["state"], case["destination_office"]) == ("handover_pending", "riga")
    assert "accept_handover" in case["triggers"]
    with pytest.raises(UnknownCase):
        app.views.case(case_id, KBP_CASEWORKER)


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        ({"destination_office": "oslo", "reason": "r"}, InvalidPayload),  # no such office
        ({"destination_office": "kyiv", "reason": "r"}, GuardFailed),  # already the destination
        ({"destination_office": "tallinn", "reason": "r"}, GuardFailed),  # the origin
    ],
)
def test_a_redirect_to_no_other_office_is_refused_and_changes_nothing(
    app: App, payload: dict[str, str], error: type[Exception]
) -> None:
    case_id = advance_to(app, "arrived")
    before = snapshot_tables(app.db)
    with pytest.raises(error):
        app.transitions.fire(case_id, "redirect_handover", TLL_CASEWORKER, payload)
    assert snapshot_tables(app.db) == before


def test_a_case_no_office_takes_over_is_closed_with_its_reason_and_its_deadline_cancelled(app: App) -> None:
    case_id = advance_to(app, "handover_pending")
    assert "close_without_handover" in app.views.case(case_id, TLL_APPROVER)["triggers"]
    reason = {"reason": "no office covers the region where the family settled"}
    result = app.transitions.fire(case_id, "close_without_handover", TLL_APPROVER, reason)
    assert result.to_state == "closed"
    t, c = tb.timers.c, tb.cases.c
    with app.db.connect() as conn:
        assert conn.scalar(select(c.outcome).where(c.id == case_id)) == "not_handed_over"
        pending = conn.scalars(select(t.name).where(t.case_id == case_id, t.status == "pending")).all()
    assert pending == []


def test_a_case_whose_package_is_with_another_deployment_is_not_closed_here(app: App) -> None:
    """Kyiv runs its own deployment and holds the package: its copy could still accept it, so
    Tallinn cannot close the case until Kyiv refuses (which returns it to arrived)."""
    case_id = advance_to(app, "handover_pending")
    with app.db.begin() as conn:
        conn.execute(
            update(tb.offices)
            .where(tb.offices.c.code == "kyiv")
            .values(webhook_url="https://kyiv.example.org/in")
        )
    before = snapshot_tables(app.db)
    with pytest.raises(GuardFailed, match="must refuse the handover"):
        app.transitions.fire(case_id, "close_without_handover", TLL_APPROVER, {"reason": "no answer"})
    assert snapshot_tables(app.db) == before
    # Nor is it offered: the case's triggers leave out what would be refused.
    offered = app.views.case(case_id, TLL_APPROVER)["triggers"]
    assert isinstance(offered, list) and "close_without_handover" not in offered
