"""Statements compiled once and sent as the driver's SQL (workflow/adapters/db.py DriverStatement):
the same rows written and read as through ``Connection.execute``, the same errors, the same events."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import String, TypeDecorator, bindparam, event, exc, insert, literal, select, update
from sqlalchemy.engine import Dialect

from tests.support import case_row
from workflow.adapters import tables as tb
from workflow.adapters.db import DriverStatement, execute_fixed, make_engine

# An INSERT whose parameters go through bind processors (JSONB), with a fixed literal among them.
HISTORY = insert(tb.case_history).values(
    case_id=bindparam("case_id"),
    version=bindparam("version"),
    trigger=bindparam("trigger"),
    from_state=None,
    to_state=literal("inquiry"),
    actor_id=bindparam("actor_id"),
    payload=bindparam("payload", type_=tb.Json),
    lifecycle_version=bindparam("lifecycle_version"),
    occurred_at=bindparam("occurred_at", type_=tb.Stamp),
)
# An UPDATE whose RETURNING row is text and numbers, one parameter used twice.
BUMP = (
    update(tb.cases)
    .where(tb.cases.c.id == bindparam("case_id"), tb.cases.c.version == bindparam("version"))
    .values(version=tb.cases.c.version + 1, updated_at=bindparam("now", type_=tb.Stamp))
    .returning(tb.cases.c.state, tb.cases.c.version)
)


class Shouted(TypeDecorator[str]):
    impl = String
    cache_ok = True

    def process_result_value(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else f"{value.upper()}!"


def _case(conn: Any, case_id: str) -> None:
    conn.execute(insert(tb.offices).values(code="tallinn", name="Tallinn", country="EE"))
    now = datetime(2026, 12, 7, 12, tzinfo=UTC)
    conn.execute(insert(tb.cases).values(case_row(case_id, now, destination_office="tallinn", language="en")))


def _history_params(case_id: str, version: int, payload: Any) -> dict[str, Any]:
    return {
        "case_id": case_id,
        "version": version,
        "trigger": "record_eligibility",
        "actor_id": "tallinn-caseworker",
        "payload": payload,
        "lifecycle_version": "2026.1",
        # Not UTC: stored as the same instant, as through Connection.execute.
        "occurred_at": datetime(2026, 12, 7, 14, 30, tzinfo=timezone(timedelta(hours=2))),
    }


def test_rows_written_and_read_as_through_execute(pg_url: str) -> None:
    engine = make_engine(pg_url, pool_size=1)
    case_id = str(uuid.uuid4())
    try:
        with engine.begin() as conn:
            _case(conn, case_id)
            # JSON's None is JSON null (SQLAlchemy's default), not SQL NULL, through both paths.
            for version, payload in ((1, {"a": [1, "x"]}), (2, None)):
                conn.execute(HISTORY, _history_params(case_id, version, payload))
            for version, payload in ((3, {"a": [1, "x"]}), (4, None)):
                execute_fixed(conn, HISTORY, _history_params(case_id, version, payload))
            h = tb.case_history.c
            rows = conn.execute(
                select(h.version, h.to_state, h.from_state, h.payload, h.occurred_at)
                .where(h.case_id == case_id)
                .order_by(h.version)
            ).all()
            nulls = conn.exec_driver_sql(
                "SELECT version FROM case_history WHERE payload = 'null'::jsonb ORDER BY version"
            ).all()
        stamp = datetime(2026, 12, 7, 12, 30, tzinfo=UTC)
        assert [tuple(r) for r in rows] == [
            (1, "inquiry", None, {"a": [1, "x"]}, stamp),
            (2, "inquiry", None, None, stamp),
            (3, "inquiry", None, {"a": [1, "x"]}, stamp),
            (4, "inquiry", None, None, stamp),
        ]
        assert [r.version for r in nulls] == [2, 4]

        with engine.begin() as conn:
            now = datetime(2026, 12, 8, tzinfo=UTC)
            bumped = execute_fixed(conn, BUMP, {"case_id": case_id, "version": 1, "now": now}).one()
            stale = execute_fixed(conn, BUMP, {"case_id": case_id, "version": 1, "now": now}).first()
            updated = conn.scalar(select(tb.cases.c.updated_at).where(tb.cases.c.id == case_id))
        assert (bumped.state, bumped.version) == ("inquiry", 2)
        assert stale is None
        assert updated == now
    finally:
        engine.dispose()


def test_errors_and_events_are_those_of_the_connection(pg_url: str) -> None:
    engine = make_engine(pg_url, pool_size=1)
    case_id = str(uuid.uuid4())
    seen: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *a: seen.append(a[2]))
    try:
        with engine.begin() as conn:
            _case(conn, case_id)
        seen.clear()
        with pytest.raises(exc.IntegrityError), engine.begin() as conn:  # (case_id, version) is unique
            execute_fixed(conn, HISTORY, _history_params(case_id, 1, {}))
            execute_fixed(conn, HISTORY, _history_params(case_id, 1, {}))
        assert len(seen) == 2
        assert seen[0] == DriverStatement(HISTORY, engine.dialect).sql
        assert "%(payload)s" in seen[0]
        with engine.connect() as conn:  # the failed transaction left nothing
            assert (
                conn.scalar(select(tb.case_history.c.id).where(tb.case_history.c.case_id == case_id)) is None
            )
            params = _history_params(case_id, 1, {})
            del params["actor_id"]
            with pytest.raises(KeyError):
                execute_fixed(conn, HISTORY, params)
    finally:
        engine.dispose()


def test_statements_it_cannot_take_go_through_execute(pg_url: str) -> None:
    """An expanding (IN) parameter, or a column whose type processes what the driver returns:
    refused by DriverStatement, and execute_fixed gives SQLAlchemy's own result."""
    expanding = select(tb.offices.c.code).where(tb.offices.c.code.in_(bindparam("codes", expanding=True)))
    processed = select(literal("kyiv", type_=Shouted).label("code"))
    engine = make_engine(pg_url, pool_size=1)
    try:
        with pytest.raises(ValueError, match="expanding"):
            DriverStatement(expanding, engine.dialect)
        with pytest.raises(ValueError, match="result processor"):
            DriverStatement(processed, engine.dialect)
        with engine.begin() as conn:
            conn.execute(insert(tb.offices).values(code="kyiv", name="Kyiv", country="UA"))
            assert execute_fixed(conn, expanding, {"codes": ["kyiv", "none"]}).scalars().all() == ["kyiv"]
            assert execute_fixed(conn, processed, {}).scalar() == "KYIV!"
    finally:
        engine.dispose()


def test_on_sqlite_it_is_connection_execute(tmp_path: Any) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'a.sqlite3'}")
    try:
        tb.metadata.create_all(engine)
        case_id = str(uuid.uuid4())
        with engine.begin() as conn:
            _case(conn, case_id)
            now = datetime(2026, 12, 8, tzinfo=UTC)
            bumped = execute_fixed(conn, BUMP, {"case_id": case_id, "version": 1, "now": now}).one()
            updated = conn.scalar(select(tb.cases.c.updated_at).where(tb.cases.c.id == case_id))
        assert (bumped.state, bumped.version) == ("inquiry", 2)
        assert updated == now  # UtcDateTime's processors ran (SQLite keeps no offset)
    finally:
        engine.dispose()
