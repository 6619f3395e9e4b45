"""The counts of cases by state and owner office that the database keeps (``case_counts``,
migration 0007) equal counting the cases: after creation, moves, a handover and a refused fire,
after concurrent fires in opposite directions (PostgreSQL), and for cases that were there before
the migration."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, func, select

from tests.support import REGISTRATION, advance_to, case_row, register
from workflow.adapters import tables as tb
from workflow.adapters.db import make_engine
from workflow.adapters.migrate import downgrade, upgrade
from workflow.adapters.ops_views import OpsViews, StateCount
from workflow.bootstrap import App
from workflow.demo import STEPS, TLL_CASEWORKER, TLL_TRAVEL
from workflow.domain.actors import Actor, Role
from workflow.domain.errors import VersionConflict

c = tb.cases.c


def counted(db: Engine) -> list[StateCount]:
    """What the counters stand for: every case counted."""
    with db.connect() as conn:
        rows = conn.execute(
            select(c.state, c.owner_office, func.count())
            .group_by(c.state, c.owner_office)
            .order_by(c.state, c.owner_office)
        )
        return [StateCount(state, office, n) for state, office, n in rows]


def test_counts_follow_creation_moves_and_the_handover(app: App) -> None:
    views = OpsViews(app.db)
    assert views.cases_by_state() == []
    register(app)
    riga = Actor.of("riga-caseworker", "riga", Role.CASEWORKER)
    app.transitions.create_case(riga, {**REGISTRATION, "origin_office": "riga"})
    handed = advance_to(app, "handed_over")  # accept_handover: kyiv owns it from then on
    withdrawn = register(app).case_id
    app.transitions.fire(withdrawn, "withdraw", TLL_CASEWORKER, {"reason": "the family stays"})
    eligibility = STEPS[0]  # record_eligibility: reflexive, no change of count
    app.transitions.fire(register(app).case_id, eligibility.trigger, eligibility.actor, eligibility.payload)

    assert views.cases_by_state() == [
        StateCount("handed_over", "kyiv", 1),
        StateCount("inquiry", "riga", 1),
        StateCount("inquiry", "tallinn", 2),
        StateCount("withdrawn", "tallinn", 1),
    ]
    assert views.cases_by_state() == counted(app.db)
    assert app.views.case(handed)["owner_office"] == "kyiv"


def test_a_refused_fire_leaves_the_counts_as_they_were(app: App) -> None:
    case_id = register(app).case_id
    before = OpsViews(app.db).cases_by_state()
    with pytest.raises(VersionConflict):
        app.transitions.fire(case_id, "withdraw", TLL_CASEWORKER, {"reason": "x"}, expected_version=7)
    assert OpsViews(app.db).cases_by_state() == before == [StateCount("inquiry", "tallinn", 1)]


@pytest.mark.postgres
def test_concurrent_fires_in_opposite_directions_neither_deadlock_nor_miscount(pg_app: App) -> None:
    """cancel_booking moves cases from travel_booked to travel_documents_ready while book_travel
    moves others back: each fire takes two counter rows, which both kinds take in one order."""
    booked = [advance_to(pg_app, "travel_booked") for _ in range(24)]
    ready = [advance_to(pg_app, "travel_documents_ready") for _ in range(24)]
    book = next(step for step in STEPS if step.trigger == "book_travel")

    def cancel(case_id: str) -> None:
        pg_app.transitions.fire(case_id, "cancel_booking", TLL_TRAVEL, {"reason": "strike"})

    def rebook(case_id: str) -> None:
        pg_app.transitions.fire(case_id, "book_travel", TLL_TRAVEL, book.payload)

    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [
            pool.submit(fire, case_id)
            for pair in zip(booked, ready, strict=True)
            for fire, case_id in zip((cancel, rebook), pair, strict=True)
        ]
        for future in futures:
            future.result()  # a deadlock would raise here

    views = OpsViews(pg_app.db)
    assert views.cases_by_state() == counted(pg_app.db)
    assert StateCount("travel_booked", "tallinn", 24) in views.cases_by_state()
    assert StateCount("travel_documents_ready", "tallinn", 24) in views.cases_by_state()


def test_the_migration_counts_the_cases_already_there(empty_url: str) -> None:
    upgrade(empty_url, "0006")
    db = make_engine(empty_url)
    now = datetime(2026, 11, 28, tzinfo=UTC)
    cases = [("inquiry", "tallinn"), ("inquiry", "tallinn"), ("closed", "kyiv"), ("inquiry", "riga")]
    with db.begin() as conn:
        for code in ("tallinn", "kyiv", "riga"):
            conn.execute(tb.offices.insert().values(code=code, name=code, country="EE"))
        for state, owner in cases:
            origin = "riga" if owner == "riga" else "tallinn"
            row = case_row(str(uuid.uuid4()), now, state=state, origin_office=origin, owner_office=owner)
            conn.execute(tb.cases.insert().values(row))
    upgrade(empty_url)
    expected = [
        StateCount("closed", "kyiv", 1),
        StateCount("inquiry", "riga", 1),
        StateCount("inquiry", "tallinn", 2),
    ]
    assert OpsViews(db).cases_by_state() == counted(db) == expected
    with db.begin() as conn:  # and the triggers are on from then on
        conn.execute(tb.cases.update().where(c.owner_office == "riga").values(state="withdrawn"))
    assert OpsViews(db).cases_by_state() == counted(db)
    assert StateCount("withdrawn", "riga", 1) in counted(db)
    db.dispose()
    downgrade(empty_url, "0006")
    upgrade(empty_url)  # down and up again: the backfill starts from nothing
    db = make_engine(empty_url)
    assert OpsViews(db).cases_by_state() == counted(db)
    db.dispose()
