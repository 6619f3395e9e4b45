"""The unit of work's Batch: writes nobody reads go to PostgreSQL as one statement, with the
outcome the same writes have one by one (SQLite runs them one by one)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import Connection, bindparam, event, func, select

from tests.support import register
from workflow.adapters import tables as tb
from workflow.adapters.batch import Batch
from workflow.adapters.change_writers import _CANCEL_TIMERS, _INSERT_TIMER
from workflow.adapters.repository import _UPDATE_CASE
from workflow.adapters.stores import _INSERT_HISTORY
from workflow.bootstrap import App
from workflow.demo import TLL_CASEWORKER

NOW = datetime(2026, 12, 7, tzinfo=UTC)
_MEMBERS = tb.household_members.insert()
ELIGIBLE = {
    "nationality": "UA",
    "consent_signed_on": "2026-11-01",
    "travel_document": "present",
    "asylum_status": "withdrawn",
}


class Moved(Exception):
    pass


def _timer(case_id: str, state: str = "monitoring", status: str = "pending") -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "case_id": case_id,
        "name": "monitoring_visit",
        "state": state,
        "due_at": NOW + timedelta(days=30),
        "fires_trigger": "escalate",
        "status": status,
        "created_at": NOW,
    }


@contextmanager
def batch(app: App) -> Iterator[tuple[Batch, list[str]]]:
    """A Batch on a transaction committed at the end; the statements it sent, as sent."""
    sent: list[str] = []
    with app.db.connect() as conn:

        def record(conn: Connection, cursor: Any, statement: str, *_: Any) -> None:
            if statement not in ("BEGIN", "BEGIN IMMEDIATE"):  # SQLite's, from workflow.adapters.db
                sent.append(statement)

        event.listen(conn, "before_cursor_execute", record)
        with conn.begin():
            b = Batch(conn)
            yield b, sent
            b.flush()


def _history_line(case_id: str, version: int) -> dict[str, Any]:
    return {
        "case_id": case_id,
        "version": version,
        "trigger": "record_eligibility",
        "from_state": "inquiry",
        "to_state": "inquiry",
        "actor_id": "tll-caseworker",
        "actor_office": "TLL",
        "reason": None,
        "payload": {},
        "request_id": None,
        "lifecycle_version": "1",
        "occurred_at": NOW,
    }


def _registered(app: App) -> str:
    """A new case, with a pending timer of its inquiry (as a deadline of that state would be)."""
    case_id = register(app).case_id
    with app.db.begin() as conn:
        conn.execute(_INSERT_TIMER, _timer(case_id, state="inquiry"))
    return case_id


def _statuses(app: App, case_id: str) -> list[tuple[str, str]]:
    with app.db.connect() as conn:
        rows = conn.execute(
            select(tb.timers.c.state, tb.timers.c.status)
            .where(tb.timers.c.case_id == case_id)
            .order_by(tb.timers.c.state, tb.timers.c.status)
        )
        return [tuple(row) for row in rows]  # type: ignore[misc]


def test_held_writes_go_as_one_statement_on_postgresql_and_one_by_one_on_sqlite(app: App) -> None:
    case_id = _registered(app)
    with batch(app) as (b, sent):
        b.defer(_CANCEL_TIMERS, {"_case": case_id, "_state": "inquiry"})
        b.defer(_INSERT_TIMER, [_timer(case_id), _timer(case_id, state="travel_booked")])
        b.defer(_INSERT_HISTORY, _history_line(case_id, version=2))
        if app.db.dialect.name == "postgresql":
            assert sent == []  # held until something is sent (here, the end of the block)
    assert len(sent) == (1 if app.db.dialect.name == "postgresql" else 3)
    # The inquiry timer is cancelled; the UPDATE did not see the new rows.
    assert _statuses(app, case_id) == [
        ("inquiry", "cancelled"),
        ("monitoring", "pending"),
        ("travel_booked", "pending"),
    ]


def test_a_read_sends_the_held_writes_first(app: App) -> None:
    case_id = _registered(app)
    with batch(app) as (b, _):
        b.defer(_INSERT_TIMER, _timer(case_id))
        count = b.connection().scalar(select(func.count()).where(tb.timers.c.case_id == case_id))
    assert count == 2  # the case's inquiry timer and the held one


def test_a_write_that_would_see_a_held_one_sends_the_batch_first(app: App) -> None:
    """One by one, the UPDATE after the INSERT cancels the new timer: so it does here, where in
    one statement it would not have seen it."""
    case_id = _registered(app)
    with batch(app) as (b, sent):
        b.defer(_INSERT_TIMER, _timer(case_id, state="inquiry"))
        b.defer(_CANCEL_TIMERS, {"_case": case_id, "_state": "inquiry"})
    assert len(sent) == 2
    assert _statuses(app, case_id) == [("inquiry", "cancelled")] * 2


def test_an_insert_after_a_held_delete_of_its_table_waits_for_it(app: App) -> None:
    """The household replaced with the same member ids: the DELETE goes first, then the INSERT."""
    case_id = _registered(app)
    m = tb.household_members.c
    with app.db.connect() as conn:
        members = [
            dict(row)
            for row in conn.execute(select(tb.household_members).where(m.case_id == case_id)).mappings()
        ]
    with batch(app) as (b, sent):
        b.defer(tb.household_members.delete().where(m.case_id == case_id), {})
        b.defer(_MEMBERS, [{**row, "full_name": "Renamed"} for row in members])
    assert len(sent) == 2
    with app.db.connect() as conn:
        names = conn.scalars(select(m.full_name).where(m.case_id == case_id)).all()
    assert members and names == ["Renamed"] * len(members)


@pytest.mark.parametrize("alone", [True, False], ids=["first", "after-a-write"])
def test_a_guarded_update_that_changes_no_row_calls_on_none(app: App, alone: bool) -> None:
    case_id = _registered(app)

    def moved() -> None:
        raise Moved

    stale = {"state": "closed", "version": 99, "updated_at": NOW, "_id": case_id, "_expected": 41}
    with pytest.raises(Moved), batch(app) as (b, _):
        if not alone:
            b.defer(_INSERT_TIMER, _timer(case_id))
        b.defer(_UPDATE_CASE, stale, on_none=moved)
        b.defer(_INSERT_TIMER, _timer(case_id, state="arrived"))
        # As a fire that lost the race would write it: its version is the winner's. Written
        # anyway, it would fail the (case_id, version) key before on_none could say why.
        b.defer(_INSERT_HISTORY, _history_line(case_id, version=1))
    # The transaction rolled back: nothing of the batch stayed.
    assert _statuses(app, case_id) == [("inquiry", "pending")]
    assert app.views.case(case_id)["state"] == "inquiry"


def test_a_guarded_update_that_changes_its_row_goes_on(app: App) -> None:
    case_id = _registered(app)
    called: list[str] = []
    fresh = {"state": "inquiry", "version": 2, "updated_at": NOW, "_id": case_id, "_expected": 1}
    with batch(app) as (b, _):
        b.defer(_UPDATE_CASE, fresh, on_none=lambda: called.append("on_none"))
        b.defer(_INSERT_TIMER, _timer(case_id))
    assert called == []
    assert app.views.case(case_id)["version"] == 2


def _outbox_row(case_id: str) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "case_id": case_id,
        "case_version": 9,
        "event_type": "EligibilityRecorded",
        "payload": {},
        "occurred_at": NOW,
    }


def test_two_inserts_into_one_table_go_one_after_the_other(app: App) -> None:
    """In one statement their order is not set: the outbox's ids (the relay's order) would be."""
    case_id = _registered(app)
    first, second = _outbox_row(case_id), _outbox_row(case_id)
    with batch(app) as (b, sent):
        b.defer(tb.outbox.insert(), first)
        b.defer(tb.outbox.insert(), second)
    assert len(sent) == 2
    with app.db.connect() as conn:
        ids = dict(
            conn.execute(
                select(tb.outbox.c.event_id, tb.outbox.c.id).where(tb.outbox.c.case_id == case_id)
            ).all()
        )
    assert ids[first["event_id"]] < ids[second["event_id"]]


def test_an_insert_after_an_update_of_a_table_with_other_unique_keys_waits_for_it(app: App) -> None:
    """The UPDATE could free a key the INSERT takes: one by one only. (Timers' only key is their
    id, so the cancel and the new timer of a fire go together: the first test.)"""
    case_id = _registered(app)
    with batch(app) as (b, sent):
        b.defer(
            tb.outbox.update().where(tb.outbox.c.case_id == bindparam("_case")).values(attempts=0),
            {"_case": case_id},
        )
        b.defer(tb.outbox.insert(), _outbox_row(case_id))
    assert len(sent) == 2


def test_several_rows_are_for_an_insert_and_on_none_must_raise(app: App) -> None:
    case_id = _registered(app)
    with pytest.raises(ValueError), batch(app) as (b, _):
        b.defer(_CANCEL_TIMERS, [{"_case": case_id, "_state": "inquiry"}] * 2)
    stale = {"version": 99, "updated_at": NOW, "_id": case_id, "_expected": 41}
    with pytest.raises(RuntimeError, match="did not raise"), batch(app) as (b, _):
        b.defer(_UPDATE_CASE, stale, on_none=lambda: None)
        b.defer(_INSERT_TIMER, _timer(case_id))


# A unit of work on PostgreSQL: its connection in autocommit, BEGIN only when a statement needs it.


@contextmanager
def lazy_batch(app: App) -> Iterator[tuple[Batch, list[tuple[str, bool]]]]:
    """A Batch as a unit of work has it on PostgreSQL; each statement sent, and whether a
    transaction was open on the server once it had run (the commit is a no-op if none was)."""
    sent: list[tuple[str, bool]] = []
    with app.db.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:

        def record(conn: Connection, cursor: Any, statement: str, *_: Any) -> None:
            status = conn.connection.dbapi_connection.info.transaction_status  # type: ignore[union-attr]
            sent.append((statement, status != psycopg.pq.TransactionStatus.IDLE))

        event.listen(conn, "after_cursor_execute", record)
        tx = conn.begin()
        try:
            b = Batch(conn, lazy=True)
            yield b, sent
            b.finish()
            tx.commit()
        except BaseException:
            tx.rollback()
            raise


def test_a_fire_on_postgresql_is_a_read_and_one_statement_with_no_transaction_around_them(
    pg_app: App,
) -> None:
    case_id = register(pg_app).case_id
    sent: list[tuple[str, bool]] = []

    def record(conn: Connection, cursor: Any, statement: str, *_: Any) -> None:
        status = conn.connection.dbapi_connection.info.transaction_status  # type: ignore[union-attr]
        sent.append((statement.split(maxsplit=1)[0], status != psycopg.pq.TransactionStatus.IDLE))

    event.listen(pg_app.db, "after_cursor_execute", record)
    try:
        result = pg_app.transitions.fire(case_id, "record_eligibility", TLL_CASEWORKER, ELIGIBLE)
    finally:
        event.remove(pg_app.db, "after_cursor_execute", record)
    # No BEGIN, and no transaction open after either statement: the commit sends nothing.
    assert sent == [("SELECT", False), ("WITH", False)]
    assert pg_app.views.case(case_id)["version"] == result.version == 2
    with pg_app.db.connect() as conn:
        assert conn.scalar(select(func.count()).where(tb.outbox.c.case_id == case_id)) == 2


def test_a_lazy_batch_whose_guard_finds_no_row_writes_nothing_and_begins_nothing(pg_app: App) -> None:
    case_id = _registered(pg_app)
    stale = {"state": "closed", "version": 99, "updated_at": NOW, "_id": case_id, "_expected": 41}
    with pytest.raises(Moved), lazy_batch(pg_app) as (b, sent):
        b.defer(_UPDATE_CASE, stale, on_none=_raise_moved)
        b.defer(_INSERT_TIMER, _timer(case_id, state="arrived"))
        b.defer(_INSERT_HISTORY, _history_line(case_id, version=1))
    assert [in_tx for _, in_tx in sent] == [False]  # one statement, in autocommit
    assert _statuses(pg_app, case_id) == [("inquiry", "pending")]
    assert pg_app.views.case(case_id)["state"] == "inquiry"


def test_a_lazy_batch_with_a_write_before_its_guard_goes_in_a_transaction(pg_app: App) -> None:
    """In one statement alone, the timer before the guard would stay when the guard found no row."""
    case_id = _registered(pg_app)
    stale = {"state": "closed", "version": 99, "updated_at": NOW, "_id": case_id, "_expected": 41}
    with pytest.raises(Moved), lazy_batch(pg_app) as (b, sent):
        b.defer(_INSERT_TIMER, _timer(case_id))
        b.defer(_UPDATE_CASE, stale, on_none=_raise_moved)
    assert sent[0][0] == "BEGIN"
    assert _statuses(pg_app, case_id) == [("inquiry", "pending")]  # rolled back


def test_a_lazy_batch_begins_for_a_checked_write_and_a_read_after_held_writes(pg_app: App) -> None:
    case_id = _registered(pg_app)
    with pytest.raises(Moved), lazy_batch(pg_app) as (b, sent):
        assert b.reader().scalar(select(tb.cases.c.version).where(tb.cases.c.id == case_id)) == 1
        b.defer(_INSERT_TIMER, _timer(case_id))
        count = b.reader().scalar(select(func.count()).where(tb.timers.c.case_id == case_id))
        assert count == 2  # the held timer went first, inside the transaction begun for it
        b.connection().execute(_INSERT_TIMER, _timer(case_id, state="arrived"))
        raise Moved
    kinds = [statement.split(maxsplit=1)[0] for statement, _ in sent]
    assert kinds == ["SELECT", "BEGIN", "INSERT", "SELECT", "INSERT"]
    assert [in_tx for _, in_tx in sent] == [False, True, True, True, True]
    assert _statuses(pg_app, case_id) == [("inquiry", "pending")]  # all rolled back


def _raise_moved() -> None:
    raise Moved
