"""Moves committed outbox rows to the broker, in order per case, each row once across relays."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import Engine, bindparam, case, exists, func, literal, or_, select, update

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
WIDTH = len(_COLUMNS)  # an OutboxMessage's fields, first in the search's rows
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
# An event sent this many times in all (the first send and the resends) whose jobs still never
# ran is given up: its unfinished jobs go to the dead letters, where ops see and replay them.
MAX_SENDS = 4


def _unsettled(batch_size: int, jobs_per_type: Mapping[str, int], postgres: bool) -> Any:
    """The oldest sent rows not yet settled, sent before ``cutoff``, each with whether its event
    is settled now (as many of its jobs finished, done or dead-lettered, as it has effects; an
    event without effects at once) and whether a job of it started since ``cutoff`` (a retry
    chain still alive). A partial index holds only the unsettled rows: the search reads the rows
    that came of age since the last one, not the day's outbox. On PostgreSQL claimed with SKIP
    LOCKED, so two relays take different rows."""
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
        select(*_COLUMNS, o.attempts, (finished >= expected).label("settled"), recent.label("recent"))
        .where(o.sent_at.is_not(None), o.settled_at.is_(None), o.sent_at < bindparam("cutoff"))
        .order_by(o.sent_at, o.id)
        .limit(batch_size)
    )
    return query.with_for_update(skip_locked=True, of=tb.outbox) if postgres else query


@dataclass(frozen=True, slots=True)
class Sweep:
    """What one search for lost messages did."""

    examined: int = 0  # rows looked at (the search's limit: more may wait)
    settled: int = 0  # events found settled: not looked at again
    resent: int = 0  # events published again
    given_up: tuple[OutboxMessage, ...] = ()  # sent MAX_SENDS times and never run: for the caller


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
        # SQLite: the search holds the single write lock; a smaller round lets writers in between.
        self.sweep_size = 5 * batch_size if self._postgres else batch_size
        self._unsettled = _unsettled(self.sweep_size, self._jobs_per_type, self._postgres)

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

    def redeliver_stalled(self, after: timedelta, resend_lost: bool = True) -> Sweep:
        """Looks at the sent rows not yet settled that were sent at least ``after`` ago: a
        settled event is marked so (``settled_at``) and not looked at again; one none of whose
        jobs started since is published again and stamped sent now (``attempts`` counts the
        sends), so it goes again at most once per ``after``; a copy of a message that was not
        lost after all does nothing (the jobs inbox). One sent ``MAX_SENDS`` times is returned
        as given up, for the caller to file its jobs in the dead letters and then mark it with
        ``settle``. A resent event may arrive after later events of its case. With
        ``resend_lost`` false (the caller cannot tell lost from queued: messages wait in the
        broker) only settled events are marked."""
        if not self._jobs_per_type:
            return Sweep()
        now = _now()
        with writing(self._db) as conn:
            rows = conn.execute(self._unsettled, {"cutoff": now - after}).all()
            settled = [row.id for row in rows if row.settled]
            stalled = [row for row in rows if resend_lost and not row.settled and not row.recent]
            resend = [OutboxMessage(*row[:WIDTH]) for row in stalled if row.attempts < MAX_SENDS]
            given_up = tuple(OutboxMessage(*row[:WIDTH]) for row in stalled if row.attempts >= MAX_SENDS)
            if resend:
                self._publish(resend)
                conn.execute(
                    _MARK_SENT.values(sent_at=now, attempts=o.attempts + 1), {"ids": [m.id for m in resend]}
                )
            if settled:
                conn.execute(_MARK_SENT.values(settled_at=now), {"ids": settled})
        if resend:
            log.warning("outbox.redelivered", count=len(resend), first_event_id=resend[0].event_id)
        return Sweep(len(rows), len(settled), len(resend), given_up)

    def settle(self, ids: Sequence[int]) -> None:
        """Marks rows settled: their jobs are finished, or filed in the dead letters."""
        if ids:
            with writing(self._db) as conn:
                conn.execute(_MARK_SENT.values(settled_at=_now()), {"ids": list(ids)})


def _now() -> datetime:
    return datetime.now(UTC)
