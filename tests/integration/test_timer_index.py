"""A case's timers are found without reading its whole timer history: the transition's cancel
through the pending ones (migration 0009), a notice's facts through those its event's fire
started or fired (0011)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, bindparam, inspect, select, text
from sqlalchemy.dialects import postgresql

from tests.support import register
from workflow.adapters import tables as tb
from workflow.adapters.change_writers import _CANCEL_TIMERS
from workflow.adapters.db import make_engine
from workflow.adapters.migrate import downgrade, upgrade
from workflow.adapters.notices import _FACTS
from workflow.bootstrap import App

NOW = datetime(2026, 12, 6, tzinfo=UTC)


def _history(db: Engine, case_id: str, cancelled: int) -> None:
    """The case's past: ``cancelled`` timers, each once started and cancelled, and one pending."""
    rows = [
        {
            "id": str(uuid.uuid4()),
            "case_id": case_id,
            "name": "monitoring_visit",
            "state": "monitoring",
            "due_at": NOW + timedelta(days=i),
            "fires_trigger": "escalate",
            "status": "cancelled" if i < cancelled else "pending",
            "created_at": NOW + timedelta(hours=i),  # each started by a fire of its own
        }
        for i in range(cancelled + 1)
    ]
    with db.begin() as conn:
        conn.execute(tb.timers.insert(), rows)
        conn.execute(text("ANALYZE timers"))


def _plan(db: Engine, statement: object, params: dict[str, object]) -> str:
    """The plan the database uses for the statement. On PostgreSQL the generic plan of the
    statement prepared with its parameters ($1, $2 ...), as a pooled connection runs it once
    psycopg has prepared it: only constants in the statement can match a partial index there."""
    if db.dialect.name == "sqlite":
        compiled = statement.compile(dialect=db.dialect)  # type: ignore[attr-defined]
        values = compiled.construct_params(params)
        args = tuple(values[name] for name in compiled.positiontup)
        with db.connect() as conn:
            rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + str(compiled), args).all()
        return "\n".join(str(row[-1]) for row in rows)
    compiled = statement.compile(dialect=postgresql.psycopg.dialect(paramstyle="numeric_dollar"))  # type: ignore[attr-defined]
    values = compiled.construct_params(params)
    literals = ", ".join("'" + str(values[name]).replace("'", "''") + "'" for name in compiled.positiontup)
    with db.connect() as conn:
        conn.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
        conn.exec_driver_sql(f"PREPARE planned AS {compiled}")
        rows = conn.exec_driver_sql(f"EXPLAIN EXECUTE planned({literals})").all()
        conn.exec_driver_sql("DEALLOCATE planned")
        conn.rollback()
    return "\n".join(str(row[0]) for row in rows)


def test_the_index_is_there_and_covers_only_pending_timers(app: App) -> None:
    indexes = {ix["name"]: ix for ix in inspect(app.db).get_indexes("timers")}
    assert indexes["ix_timers_case_pending"]["column_names"] == ["case_id"]
    with app.db.connect() as conn:
        if app.db.dialect.name == "postgresql":
            definition = conn.scalar(
                text("SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_timers_case_pending'")
            )
        else:
            definition = conn.scalar(
                text("SELECT sql FROM sqlite_master WHERE name = 'ix_timers_case_pending'")
            )
    assert "pending" in str(definition) and "WHERE" in str(definition).upper()


def test_a_case_with_a_long_timer_history_is_read_through_its_pending_timers(app: App) -> None:
    case_id = register(app).case_id
    _history(app.db, case_id, 3000)
    cancel = _plan(app.db, _CANCEL_TIMERS, {"_case": case_id, "_state": "monitoring"})
    facts = _plan(app.db, _FACTS, {"case_id": case_id, "event_id": "event-1"})
    assert "ix_timers_case_pending" in cancel, cancel
    # A notice's deadline as of its event: the timers its fire started or fired.
    assert "ix_timers_case_created" in facts and "ix_timers_case_fired" in facts, facts


def test_a_look_up_by_case_alone_goes_through_the_index_that_leads_with_it(app: App) -> None:
    """ix_timers_case_id is gone (migration 0015): (case_id, created_at) answers by case alone."""
    assert "ix_timers_case_id" not in {ix["name"] for ix in inspect(app.db).get_indexes("timers")}
    case_id = register(app).case_id
    _history(app.db, register(app).case_id, 3000)
    for _ in range(40):  # the case is one of many
        _history(app.db, register(app).case_id, 5)
    _history(app.db, case_id, 3)
    by_case = select(tb.timers.c.id).where(tb.timers.c.case_id == bindparam("case_id"))
    plan = _plan(app.db, by_case, {"case_id": case_id})
    assert "ix_timers_case_created" in plan, plan


def test_the_index_on_case_id_alone_comes_back_with_a_downgrade(empty_url: str) -> None:
    def names() -> set[str]:
        db = make_engine(empty_url)
        try:
            return {ix["name"] for ix in inspect(db).get_indexes("timers")}
        finally:
            db.dispose()

    upgrade(empty_url)
    assert "ix_timers_case_id" not in names() and "ix_timers_case_created" in names()
    downgrade(empty_url, "0014")
    assert "ix_timers_case_id" in names()
    upgrade(empty_url)
    assert "ix_timers_case_id" not in names()
