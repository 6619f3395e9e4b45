"""The PostgreSQL engine's cursors describe their results as plain DBAPI tuples."""

from __future__ import annotations

import psycopg
from sqlalchemy import select, text

from workflow.adapters import tables as tb
from workflow.adapters.db import LeanCursor, make_engine


def test_descriptions_are_name_and_type_oid_tuples_and_results_read_as_before(pg_url: str) -> None:
    engine = make_engine(pg_url, pool_size=1)
    try:
        with engine.connect() as conn:
            result = conn.execute(text("SELECT 1 AS number, 'x'::text AS word, NULL::jsonb AS doc"))
            assert isinstance(result.cursor, LeanCursor)
            description = result.cursor.description
            int4, text_oid, jsonb = (psycopg.adapters.types[n].oid for n in ("int4", "text", "jsonb"))
            assert description == [
                ("number", int4, None, None, None, None, None),
                ("word", text_oid, None, None, None, None, None),
                ("doc", jsonb, None, None, None, None, None),
            ]
            assert result.mappings().one() == {"number": 1, "word": "x", "doc": None}
            # psycopg's own answers where there are no columns: none for a command, [] for "SELECT".
            command = conn.execute(text("CREATE TEMPORARY TABLE lean (a int)"))
            assert command.cursor is None or command.cursor.description is None
            assert conn.exec_driver_sql("SELECT").cursor.description == []
            assert conn.execute(select(tb.offices.c.code).where(tb.offices.c.code == "none")).all() == []
    finally:
        engine.dispose()
