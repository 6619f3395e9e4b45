"""Engine creation for PostgreSQL and the embedded SQLite default."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url

WRITE_OPTION = "avrr_write"  # execution option of connections that will write (units of work)
POOL_RECYCLE = 1800  # seconds: a server connection is replaced once this old


def make_engine(url: str, pool_size: int = 10, pre_ping: bool = False, **kw: Any) -> Engine:
    """``pre_ping`` costs a round trip per checkout (about a tenth of a fire). Without it, the first
    use of a connection the server dropped fails once and SQLAlchemy then invalidates the whole
    pool; callers retry (workers) or answer 503 (API). Connections are recycled every 30 minutes."""
    parsed = make_url(url)
    # Parameters may hold personal data: keep them out of error messages and logs.
    kw.setdefault("hide_parameters", True)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(
            url,
            # UTC sessions: timestamps come back in UTC whatever the server's zone (see UtcDateTime).
            connect_args={"options": "-c TimeZone=UTC"},
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_pre_ping=pre_ping,
            pool_recycle=POOL_RECYCLE,
            **kw,
        )
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **kw)
    _serialise_sqlite_writers(engine)
    return engine


def _serialise_sqlite_writers(engine: Engine) -> None:
    """BEGIN IMMEDIATE: a transaction takes the write lock up front, so a read-then-write
    never fails on a stale snapshot and the optimistic version check is the only conflict."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _: Any) -> None:
        dbapi_connection.isolation_level = None  # let SQLAlchemy emit BEGIN itself
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Units of work write: they take the lock up front. Reads begin deferred and never wait.
        write = conn.get_execution_options().get(WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


@contextmanager
def writing(engine: Engine) -> Iterator[Connection]:
    """A transaction that will write: on SQLite it takes the write lock when it begins."""
    with engine.connect().execution_options(**{WRITE_OPTION: True}) as conn, conn.begin():
        yield conn
