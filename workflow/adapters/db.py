"""Engine creation for PostgreSQL and the embedded SQLite default."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, cast

import psycopg
from psycopg.pq import ExecStatus
from sqlalchemy import Connection, CursorResult, Engine, Executable, create_engine, event
from sqlalchemy.engine import Dialect, make_url

WRITE_OPTION = "avrr_write"  # execution option of connections that will write (units of work)
POOL_RECYCLE = 1800  # seconds: a server connection is replaced once this old


_ROWS = {
    ExecStatus.TUPLES_OK,
    ExecStatus.SINGLE_TUPLE,
    getattr(ExecStatus, "TUPLES_CHUNK", ExecStatus.TUPLES_OK),
}


class LeanCursor(psycopg.Cursor[Any]):
    """psycopg's cursor with a plain ``description``: psycopg builds a Column object for each
    column, its type looked up in the adapters' registry, every time ``description`` is read,
    and SQLAlchemy reads it for every statement that returns rows: for a case's 28 columns,
    3-5% of a fire's client CPU (cProfile had said 13%). DBAPI's 7-tuples hold what SQLAlchemy
    reads of them (the name and the type's oid). The names are the statements' own labels, ASCII."""

    @property
    def description(self) -> list[tuple[Any, ...]] | None:  # type: ignore[override]
        res = self.pgresult
        if res is None or not (res.nfields or res.status in _ROWS):
            return None
        columns = []
        for i in range(res.nfields):
            name = res.fname(i)
            label = name.decode() if name else f"column_{i + 1}"  # COPY's columns have none
            columns.append((label, res.ftype(i), None, None, None, None, None))
        return columns


def make_engine(url: str, pool_size: int = 10, pre_ping: bool = False, **kw: Any) -> Engine:
    """``pre_ping`` costs a round trip per checkout (about a tenth of a fire). Without it, the first
    use of a connection the server dropped fails once and SQLAlchemy then invalidates the whole
    pool; callers retry (workers) or answer 503 (API). Connections are recycled every 30 minutes."""
    parsed = make_url(url)
    # Parameters may hold personal data: keep them out of error messages and logs.
    kw.setdefault("hide_parameters", True)
    if parsed.get_backend_name() != "sqlite":
        engine = create_engine(
            url,
            # UTC sessions: timestamps come back in UTC whatever the server's zone (see UtcDateTime).
            connect_args={"options": "-c TimeZone=UTC", "cursor_factory": LeanCursor},
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_pre_ping=pre_ping,
            pool_recycle=POOL_RECYCLE,
            **kw,
        )
        _end_statements_of_dead_clients(engine)
        return engine
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **kw)
    _serialise_sqlite_writers(engine)
    return engine


# Milliseconds between the server's checks, while a statement runs or waits, that its client is
# still there (PostgreSQL 14 and later).
CLIENT_CHECK_MS = 1000


def _end_statements_of_dead_clients(engine: Engine) -> None:
    """A statement whose process died (a worker killed by its hard time limit or by kill -9)
    is ended by the server within CLIENT_CHECK_MS. Without it, a statement waiting on a lock
    went on waiting, then ran and committed once the lock was free: a dead letter filed for a
    message that had gone back to the queue, a write no one was there to see."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _: Any) -> None:
        if dbapi_connection.info.server_version < 140000:
            return
        autocommit, dbapi_connection.autocommit = dbapi_connection.autocommit, True
        try:
            dbapi_connection.execute(f"SET client_connection_check_interval = {CLIENT_CHECK_MS}")
        finally:
            dbapi_connection.autocommit = autocommit


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


class DriverStatement:
    """A statement compiled once, for those a fire or a job sends every time: sent as the
    driver's SQL with its parameters bound here (``Connection.exec_driver_sql``), it skips
    SQLAlchemy's work per execution (the compiled cache's look-up by the statement's cache key,
    which walks the whole statement, and the parameters' construction): measured in one process,
    alternate rounds, 8-30% of a fire's client CPU and 13-17% of a task job's. The connection's
    events and error wrapping still apply, and each parameter goes through its type's bind
    processor as SQLAlchemy would. Rows come back as the driver gives them: a statement whose
    columns' types would process them (a TypeDecorator's process_result_value on PostgreSQL,
    say) is refused, as is one with an expanding (IN) parameter.
    """

    __slots__ = ("_binds", "sql")

    def __init__(self, statement: Executable, dialect: Dialect) -> None:
        compiled: Any = cast(Any, statement).compile(dialect=dialect)
        processors = compiled._bind_processors
        binds: dict[str, tuple[str, Any, bool, Any]] = {}
        for bind, name in compiled.bind_names.items():
            if bind.expanding:
                raise ValueError("a DriverStatement takes no expanding parameters")
            binds[name] = (bind.key, processors.get(name), bind.required, bind.effective_value)
        for column in compiled._result_columns:
            if column.type._cached_result_processor(dialect, None) is not None:
                raise ValueError(f"column {column.keyname!r} needs its type's result processor")
        self.sql: str = compiled.string
        self._binds = tuple((name, *bind) for name, bind in binds.items())

    def run(self, conn: Connection, params: Mapping[str, Any]) -> CursorResult[Any]:
        """The statement's result, with ``params`` by bind key (as ``Connection.execute``'s)."""
        bound = {}
        for name, key, process, required, default in self._binds:
            value = params[key] if required or key in params else default
            bound[name] = value if process is None else process(value)
        return conn.exec_driver_sql(self.sql, bound)


_COMPILED: dict[tuple[Executable, type[Dialect]], DriverStatement | None] = {}


def execute_fixed(conn: Connection, statement: Executable, params: Mapping[str, Any]) -> CursorResult[Any]:
    """``conn.execute(statement, params)`` for a statement built once (a module's own), through
    a DriverStatement on PostgreSQL where it can be one. Not for statements built per call:
    each is kept."""
    key = (statement, type(conn.dialect))
    if key not in _COMPILED:
        _COMPILED[key] = None
        if conn.dialect.name == "postgresql":
            with suppress(ValueError):  # it cannot be one: SQLAlchemy's way
                _COMPILED[key] = DriverStatement(statement, conn.dialect)
    driver = _COMPILED[key]
    return conn.execute(statement, params) if driver is None else driver.run(conn, params)
