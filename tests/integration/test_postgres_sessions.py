"""The PostgreSQL engine's sessions: plain result descriptions, and statements of dead clients ended."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid

import psycopg
from sqlalchemy import select, text

from tests.integration.processes import wait_for
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


_WRITER = """
import sys
from sqlalchemy import text
from workflow.adapters.db import make_engine

with make_engine(sys.argv[1], pool_size=1).connect() as conn:
    conn.execute(text(f"INSERT INTO {sys.argv[2]} VALUES (1)"))
    conn.commit()
"""


def test_a_statement_whose_process_was_killed_while_it_waited_on_a_lock_never_runs(pg_url: str) -> None:
    """Without the server's check that the client is there, the INSERT of the killed process
    would wait for the lock, then run and commit (tried: one row)."""
    engine = make_engine(pg_url, pool_size=1)
    table = f"dead_client_{uuid.uuid4().hex[:8]}"
    try:
        with engine.connect() as conn:
            conn.execute(text(f"CREATE TABLE {table} (x int)"))
            conn.commit()
        with engine.connect() as holder:
            holder.execute(text(f"LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE"))
            url = engine.url.render_as_string(hide_password=False)
            writer = subprocess.Popen([sys.executable, "-c", _WRITER, url, table], cwd=os.getcwd())
            try:

                def waiting() -> bool:
                    with engine.connect() as probe:
                        query = text(
                            "SELECT count(*) FROM pg_stat_activity"
                            " WHERE wait_event_type = 'Lock' AND query LIKE :q"
                        )
                        return bool(probe.scalar(query, {"q": f"INSERT INTO {table}%"}))

                wait_for(waiting, 30, "the writer waiting on the lock")
            finally:
                writer.send_signal(signal.SIGKILL)
                writer.wait()
            wait_for(lambda: not waiting(), 10, "the dead client's statement ended by the server")
            holder.rollback()
        with engine.connect() as conn:
            assert conn.scalar(text(f"SELECT count(*) FROM {table}")) == 0
    finally:
        with engine.connect() as conn:
            conn.execute(text(f"DROP TABLE IF EXISTS {table}"))
            conn.commit()
        engine.dispose()
