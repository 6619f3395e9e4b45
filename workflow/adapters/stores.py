"""Append-only history, the transactional outbox and idempotency keys, on one connection."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select
from sqlalchemy.exc import IntegrityError

from workflow.adapters import tables as tb
from workflow.adapters.batch import Batch
from workflow.domain.events import Event
from workflow.service_layer.ports import DuplicateIdempotencyKey, HistoryEntry, StoredResponse

_INSERT_HISTORY = insert(tb.case_history)
_HISTORY_FIELDS = tuple(HistoryEntry.__dataclass_fields__)
_INSERT_OUTBOX = insert(tb.outbox)
_INSERT_KEY = insert(tb.idempotency_keys)


class SqlHistoryLog:
    """Only ever INSERTs; on PostgreSQL a trigger refuses UPDATE and DELETE as well."""

    def __init__(self, conn: Connection | Batch) -> None:
        self._conn = conn if isinstance(conn, Batch) else Batch(conn)

    def append(self, entry: HistoryEntry) -> None:
        # Shallow: dataclasses.asdict deep-copies the payload, which costs more than the INSERT.
        self._conn.defer(_INSERT_HISTORY, {name: getattr(entry, name) for name in _HISTORY_FIELDS})

    def for_case(self, case_id: str) -> Sequence[HistoryEntry]:
        h = tb.case_history.c
        rows = (
            self._conn.reader()
            .execute(
                select(*(h[name] for name in HistoryEntry.__dataclass_fields__))
                .where(h.case_id == case_id)
                .order_by(h.version)
            )
            .mappings()
        )
        return [HistoryEntry(**row) for row in rows]


class SqlOutbox:
    def __init__(self, conn: Connection | Batch) -> None:
        self._conn = conn if isinstance(conn, Batch) else Batch(conn)

    def add(self, events: Sequence[Event]) -> None:
        self._conn.defer(
            _INSERT_OUTBOX,
            [
                {
                    "event_id": e.event_id,
                    "case_id": e.case_id,
                    "case_version": e.case_version,
                    "event_type": e.event_type,
                    "payload": dict(e.data),
                    "occurred_at": e.occurred_at,
                }
                for e in events
            ],
        )


class SqlIdempotencyStore:
    def __init__(self, conn: Connection | Batch) -> None:
        self._conn = conn if isinstance(conn, Batch) else Batch(conn)

    def get(self, key: str) -> StoredResponse | None:
        k = tb.idempotency_keys.c
        row = self._conn.reader().execute(select(k.request_hash, k.response).where(k.key == key)).first()
        return StoredResponse(row.request_hash, row.response) if row else None

    def add(
        self,
        key: str,
        actor_id: str,
        request_hash: str,
        case_id: str,
        response: dict[str, Any],
        now: datetime,
    ) -> None:
        conn = self._conn.connection()  # the held writes first: their errors are not this one's
        try:
            conn.execute(
                _INSERT_KEY,
                {
                    "key": key,
                    "actor_id": actor_id,
                    "request_hash": request_hash,
                    "case_id": case_id,
                    "response": response,
                    "created_at": now,
                },
            )
        except IntegrityError as exc:
            if "idempotency_keys" not in str(exc.orig):  # PostgreSQL and SQLite both name it
                raise
            raise DuplicateIdempotencyKey(key) from None
