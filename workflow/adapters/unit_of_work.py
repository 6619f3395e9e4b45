"""The SQLAlchemy unit of work: one connection, every store on it, one transaction (on PostgreSQL
begun only when one statement cannot do: workflow/adapters/batch.py)."""

from __future__ import annotations

from types import TracebackType
from typing import Self

from sqlalchemy import Connection, Engine, Transaction

from workflow.adapters.batch import Batch
from workflow.adapters.db import WRITE_OPTION
from workflow.adapters.inbound import SqlInboundStore
from workflow.adapters.repository import SqlCaseRepository
from workflow.adapters.stores import SqlHistoryLog, SqlIdempotencyStore, SqlOutbox
from workflow.adapters.timers import SqlTimerClaims
from workflow.service_layer.ports import (
    CaseRepository,
    HistoryLog,
    IdempotencyStore,
    InboundStore,
    Outbox,
    TimerClaims,
)


class SqlUnitOfWork:
    cases: CaseRepository
    history: HistoryLog
    outbox: Outbox
    idempotency: IdempotencyStore
    inbound: InboundStore
    timers: TimerClaims

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._conn: Connection | None = None
        self._batch: Batch | None = None
        self._tx: Transaction | None = None

    def __enter__(self) -> Self:
        conn = self._engine.connect()
        lazy = conn.dialect.name == "postgresql"
        # On PostgreSQL in autocommit: the Batch sends BEGIN when a statement needs it, and a
        # transaction of one statement goes without BEGIN and COMMIT (workflow/adapters/batch.py).
        options: dict[str, object] = {WRITE_OPTION: True}
        if lazy:
            options["isolation_level"] = "AUTOCOMMIT"
        self._conn = conn.execution_options(**options)
        self._tx = self._conn.begin()  # in autocommit, SQLAlchemy's commit is the server's if BEGIN went
        # Every store on one Batch: the writes nobody reads go to the database together.
        self._batch = batch = Batch(self._conn, lazy=lazy)
        self.cases = SqlCaseRepository(batch)
        self.history = SqlHistoryLog(batch)
        self.outbox = SqlOutbox(batch)
        self.idempotency = SqlIdempotencyStore(batch)
        self.inbound = SqlInboundStore(batch)
        self.timers = SqlTimerClaims(batch)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if self._tx is not None and self._tx.is_active:
                self._tx.rollback()  # anything not committed is undone, errors or not
        finally:
            if self._conn is not None:
                self._conn.close()
            self._conn = self._tx = None
            self._batch = None

    def commit(self) -> None:
        assert self._tx is not None
        assert self._batch is not None
        self._batch.finish()
        self._tx.commit()

    def rollback(self) -> None:
        if self._batch is not None:
            self._batch.discard()
        if self._tx is not None:
            self._tx.rollback()
