"""Shared test helpers: a fixed clock, table snapshots, and walking a case to a given state."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, event, select

from workflow.adapters import tables as tb
from workflow.bootstrap import App
from workflow.demo import HOUSEHOLD, STEPS, TLL_CASEWORKER
from workflow.service_layer.effects import Job, runnable_effects
from workflow.service_layer.transitions import FireResult


def case_row(case_id: str, at: datetime, **overrides: Any) -> dict[str, Any]:
    """A ``cases`` row written directly (tests of migrations, of the driver's SQL): an inquiry
    from Tallinn to Kyiv, with the columns every schema since 0001 has; ``overrides`` set others."""
    return {
        "id": case_id,
        "state": "inquiry",
        "version": 1,
        "lifecycle_version": "2026.1",
        "origin_office": "tallinn",
        "destination_office": "kyiv",
        "owner_office": "tallinn",
        "language": "uk",
        "channel": "walk_in",
        "created_at": at,
        "updated_at": at,
        "state_entered_at": at,
    } | overrides


class FixedClock:
    """A clock the test moves by hand."""

    def __init__(self, start: datetime | None = None) -> None:
        self.current = start or datetime(2026, 11, 28, 9, 0, tzinfo=UTC)

    def now(self) -> datetime:
        return self.current

    def advance(self, **delta: float) -> None:
        self.current += timedelta(**delta)


def snapshot_tables(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, in a stable order: equal snapshots mean nothing changed."""
    with engine.connect() as conn:
        return {
            table.name: sorted(
                (tuple(row) for row in conn.execute(select(table))), key=lambda r: tuple(map(str, r))
            )
            for table in tb.metadata.sorted_tables
        }


REGISTRATION = {
    "origin_office": "tallinn",
    "destination_office": "kyiv",
    "language": "uk",
    "channel": "walk_in",
    "members": HOUSEHOLD,
}


def register(app: App, **overrides: Any) -> FireResult:
    return app.transitions.create_case(TLL_CASEWORKER, {**REGISTRATION, **overrides})


def advance_to(
    app: App, state: str, case_id: str | None = None, after_each: Callable[[str], None] | None = None
) -> str:
    """Registers a case (unless given) and walks the seed story until the case is in ``state``;
    ``after_each(case_id)`` runs after each transition (the workers' part, say)."""
    case_id = case_id or register(app).case_id
    for step in STEPS:
        if app.views.case(case_id)["state"] == state:
            return case_id
        view = app.views.case(case_id)
        payload = step.payload(view) if callable(step.payload) else step.payload
        app.transitions.fire(case_id, step.trigger, step.actor, payload)
        if after_each is not None:
            after_each(case_id)
    if app.views.case(case_id)["state"] != state:
        raise AssertionError(f"the seed story never reaches {state}")
    return case_id


def jobs_of(app: App, case_id: str) -> list[Job]:
    """The jobs the workers would run for the case's events, in commit order."""
    with app.db.connect() as conn:
        events = conn.execute(
            select(tb.outbox.c.event_id, tb.outbox.c.event_type)
            .where(tb.outbox.c.case_id == case_id)
            .order_by(tb.outbox.c.id)
        ).all()
    return [
        Job(e.event_id, e.event_type, case_id, fx.name)
        for e in events
        for fx in runnable_effects(e.event_type)
    ]


def job_states(app: App, event_id: str) -> dict[str, tuple[str, int]]:
    """Each job of an event by effect: (status, attempts)."""
    j = tb.jobs.c
    with app.db.connect() as conn:
        rows = conn.execute(select(j.effect, j.status, j.attempts).where(j.event_id == event_id))
        return {effect: (status, attempts) for effect, status, attempts in rows}


@contextmanager
def statements_sent(engine: Engine) -> Iterator[list[str]]:
    """The SQL the engine sends to its driver while the block runs, in order."""
    sent: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        sent.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(engine, "before_cursor_execute", record)
