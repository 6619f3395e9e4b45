"""Moves committed outbox rows to the broker, in order per case, each row once across relays."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import Engine, and_, bindparam, case, exists, func, literal, or_, select, update

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
    occurred_at: datetime  # the commit's time: the jobs' commit-to-effect latency starts here


Publish = Callable[[Sequence[OutboxMessage]], None]
o = tb.outbox.c
_COLUMNS = (o.id, o.event_id, o.event_type, o.case_id, o.case_version, o.occurred_at)
_UNSENT = select(*_COLUMNS).where(o.sent_at.is_(None))
_MARK_SENT = update(tb.outbox).where(o.id.in_(bindparam("ids", expanding=True)))


def _claim_and_mark(batch_size: int) -> Any:
    """PostgreSQL: one statement claims up to ``batch_size`` unsent rows (SKIP LOCKED: rows
    another relay holds are passed over), keeps for each case only the rows before the first
    unsent row of that case it did not claim (another relay's, so no case's later event goes
    out ahead of an earlier one), and stamps those ``sent_at``. The stamp commits only with
    the transaction, after the publish: a failed publish rolls it back."""
    claimed = (
        select(o.id, o.case_id)
        .where(o.sent_at.is_(None))
        .order_by(o.id)
        .limit(batch_size)
        .with_for_update(skip_locked=True)
        .cte("claimed")
        .prefix_with("MATERIALIZED")
    )
    u = tb.outbox.alias("u")
    held_elsewhere = (
        select(u.c.case_id, func.min(u.c.id).label("first_id"))
        .where(
            u.c.sent_at.is_(None),
            u.c.case_id.in_(select(claimed.c.case_id)),
            u.c.id.not_in(select(claimed.c.id)),
        )
        .group_by(u.c.case_id)
        .cte("held_elsewhere")
    )
    ready = (
        select(claimed.c.id)
        .select_from(claimed.outerjoin(held_elsewhere, held_elsewhere.c.case_id == claimed.c.case_id))
        .where(or_(held_elsewhere.c.first_id.is_(None), claimed.c.id < held_elsewhere.c.first_id))
    )
    return (
        update(tb.outbox)
        .where(o.id.in_(ready))
        .values(sent_at=bindparam("now", type_=o.sent_at.type), attempts=o.attempts + 1)
        .returning(*_COLUMNS)
    )


j = tb.jobs.c
FINISHED = ("done", "dead")


def _stalled(batch_size: int, jobs_per_type: Mapping[str, int], postgres: bool) -> Any:
    """Outbox rows sent between ``horizon`` and ``cutoff`` whose event is not settled: fewer of
    its jobs finished (done or dead-lettered) than it has effects, and none of them started
    since ``cutoff``. Its message was lost on the way (a broker that lost what it held, a worker
    that did not know the task and dropped it) or its retry was. In id order; on PostgreSQL
    claimed with SKIP LOCKED, so two relays redeliver different rows."""
    expected = case(
        {event_type: count for event_type, count in jobs_per_type.items()},
        value=o.event_type,
        else_=literal(0),
    )
    finished = (
        select(func.count())
        .where(j.event_id == o.event_id, or_(j.status == FINISHED[0], j.status == FINISHED[1]))
        .scalar_subquery()
    )
    recent = exists().where(j.event_id == o.event_id, j.started_at >= bindparam("cutoff"))
    query = (
        select(*_COLUMNS)
        .where(
            and_(o.sent_at < bindparam("cutoff"), o.sent_at >= bindparam("horizon")),
            o.event_type.in_(list(jobs_per_type)),
            finished < expected,
            ~recent,
        )
        .order_by(o.id)
        .limit(batch_size)
    )
    return query.with_for_update(skip_locked=True) if postgres else query


class OutboxRelay:
    def __init__(
        self,
        db: Engine,
        publish: Publish,
        batch_size: int = 500,
        jobs_per_type: Mapping[str, int] | None = None,
    ) -> None:
        self._db, self._publish, self.batch_size = db, publish, batch_size
        # SKIP LOCKED lets relays share the table; SQLite has one writer, so one relay.
        self._postgres = db.dialect.name == "postgresql"
        self._claim = _UNSENT.order_by(o.id).limit(batch_size)
        self._claim_and_mark = _claim_and_mark(batch_size)
        # Event types with effects, and how many jobs each has (redeliver_stalled's yardstick).
        self._jobs_per_type = {t: n for t, n in (jobs_per_type or {}).items() if n > 0}
        self._stalled = _stalled(batch_size, self._jobs_per_type, self._postgres)

    def relay_once(self) -> int:
        """Publishes one batch and marks it sent in the same transaction; a failed publish
        rolls back and the rows wait for the next round.

        On PostgreSQL the rows are claimed and stamped in one statement before the publish
        (BEGIN, that statement, COMMIT: three round trips a round), so ``sent_at`` is the
        moment the batch was claimed, a publish's duration before its commit."""
        with writing(self._db) as conn:
            if self._postgres:
                batch = sorted(
                    (OutboxMessage(*row) for row in conn.execute(self._claim_and_mark, {"now": _now()})),
                    key=lambda m: m.id,
                )
                if not batch:
                    return 0
                self._publish(batch)
            else:
                batch = [OutboxMessage(*row) for row in conn.execute(self._claim)]
                if not batch:
                    return 0
                self._publish(batch)
                conn.execute(
                    _MARK_SENT.values(sent_at=_now(), attempts=o.attempts + 1),
                    {"ids": [m.id for m in batch]},
                )
        log.debug("outbox.relayed", count=len(batch))
        return len(batch)

    def redeliver_stalled(self, after: timedelta, within: timedelta = timedelta(days=1)) -> int:
        """Publishes again the events sent between ``within`` and ``after`` ago that are not
        settled (see ``_stalled``), and stamps them sent now, so each goes again at most once per
        ``after``; the jobs inbox makes a copy of a message that was not lost after all do
        nothing. A redelivered event may arrive after later events of its case. Returns how
        many went."""
        if not self._jobs_per_type:
            return 0
        now = _now()
        params = {"cutoff": now - after, "horizon": now - within}
        with writing(self._db) as conn:
            batch = [OutboxMessage(*row) for row in conn.execute(self._stalled, params)]
            if not batch:
                return 0
            self._publish(batch)
            conn.execute(
                _MARK_SENT.values(sent_at=now, attempts=o.attempts + 1), {"ids": [m.id for m in batch]}
            )
        log.warning("outbox.redelivered", count=len(batch), first_event_id=batch[0].event_id)
        return len(batch)


def _now() -> datetime:
    return datetime.now(UTC)
