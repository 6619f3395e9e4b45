"""Moves committed outbox rows to the broker, in order per case, each row once across relays."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog
from sqlalchemy import Connection, Engine, bindparam, select, update

from workflow.adapters import tables as tb
from workflow.adapters.db import writing

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    id: int
    event_id: str
    event_type: str
    case_id: str
    case_version: int


Publish = Callable[[Sequence[OutboxMessage]], None]
o = tb.outbox.c
_UNSENT = select(o.id, o.event_id, o.event_type, o.case_id, o.case_version).where(o.sent_at.is_(None))
_MARK_SENT = update(tb.outbox).where(o.id.in_(bindparam("ids", expanding=True)))


class OutboxRelay:
    def __init__(self, db: Engine, publish: Publish, batch_size: int = 500) -> None:
        self._db, self._publish, self._batch_size = db, publish, batch_size
        # SKIP LOCKED lets relays share the table; SQLite has one writer, so one relay.
        self._claim = _UNSENT.order_by(o.id).limit(batch_size)
        if db.dialect.name == "postgresql":
            self._claim = self._claim.with_for_update(skip_locked=True)

    def relay_once(self) -> int:
        """Publishes one batch and marks it sent in the same transaction; a failed publish
        rolls back and the rows wait for the next round."""
        with writing(self._db) as conn:
            rows = [OutboxMessage(*row) for row in conn.execute(self._claim)]
            batch = _first_unsent_per_case(conn, rows)
            if not batch:
                return 0
            self._publish(batch)
            conn.execute(
                _MARK_SENT.values(sent_at=datetime.now(UTC), attempts=o.attempts + 1),
                {"ids": [m.id for m in batch]},
            )
        log.debug("outbox.relayed", count=len(batch))
        return len(batch)


def _first_unsent_per_case(conn: Connection, rows: list[OutboxMessage]) -> list[OutboxMessage]:
    """Keeps, for each case, only the rows before the first unsent row another relay holds,
    so no relay publishes a case's later event ahead of an earlier one."""
    if not rows or conn.dialect.name != "postgresql":
        return rows
    cases = sorted({m.case_id for m in rows})
    unsent = conn.execute(
        select(o.case_id, o.id).where(o.sent_at.is_(None), o.case_id.in_(cases)).order_by(o.id)
    )
    mine = {m.id for m in rows}
    blocked_from: dict[str, int] = {}
    for case_id, row_id in unsent:
        if row_id not in mine and case_id not in blocked_from:
            blocked_from[case_id] = row_id
    return [m for m in rows if m.id < blocked_from.get(m.case_id, m.id + 1)]
