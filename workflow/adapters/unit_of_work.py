"""The SQLAlchemy unit of work: one connection, one transaction, every store on it."""

from __future__ import annotations

from types import TracebackType
from typing import Self

from sqlalchemy import Connection, Engine, Transaction

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
        self._tx: Transaction | None = None

    def __enter__(self) -> Self:
        self._conn = self._engine.connect().execution_options(**{WRITE_OPTION: True})
        self._tx = self._conn.begin()
        self.cases = SqlCaseRepository(self._conn)
        self.history = SqlHistoryLog(self._conn)
        self.outbox = SqlOutbox(self._conn)
        self.idempotency = SqlIdempotencyStore(self._conn)
        self.inbound = SqlInboundStore(self._conn)
        self.timers = SqlTimerClaims(self._conn)
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

    def commit(self) -> None:
        assert self._tx is not None
        self._tx.commit()

    def rollback(self) -> None:
        if self._tx is not None:
            self._tx.rollback()
