"""The timer rows beat claims: due pending timers, taken with SKIP LOCKED under a lease.

Statuses: ``pending`` (armed), ``cancelled`` (its state was left), ``fired``, ``void`` (the
fire was refused). A claim leaves a timer pending and stamps ``claimed_at``, so the partial
index on pending timers still finds it: a pending timer with ``claimed_at`` set is being fired,
or was being fired by a beat run that died, and is claimed again once the lease has run out.
``fired_at`` is the time it was marked fired or void.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, or_, select, update

from workflow.adapters import tables as tb
from workflow.adapters.batch import Batch
from workflow.adapters.db import writing
from workflow.service_layer.timers import DueTimer

_t = tb.timers.c
_PENDING = tb.PENDING  # a literal: the partial index ix_timers_due (see tables.PENDING)


class SqlTimerStore:
    """Implements ``TimerStore``; each call is its own short transaction."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def claim_due(self, now: datetime, limit: int, lease: timedelta) -> Sequence[DueTimer]:
        due = (
            select(_t.id, _t.case_id, _t.name, _t.fires_trigger, _t.due_at)
            .where(
                _t.status == _PENDING,
                _t.due_at <= now,
                or_(_t.claimed_at.is_(None), _t.claimed_at <= now - lease),
            )
            .order_by(_t.due_at)
            .limit(limit)
            # PostgreSQL: overlapping beat runs take disjoint rows. SQLite ignores this, and
            # ``writing`` serialises the claims there instead (BEGIN IMMEDIATE).
            .with_for_update(skip_locked=True)
        )
        with writing(self._engine) as conn:
            rows = conn.execute(due).all()
            if rows:
                conn.execute(update(tb.timers).where(_t.id.in_([r.id for r in rows])).values(claimed_at=now))
        return [DueTimer(r.id, r.case_id, r.name, r.fires_trigger, r.due_at) for r in rows]

    def mark_fired(self, timer_id: str, now: datetime) -> None:
        # The fire marked it already (SqlTimerClaims); this only marks a still pending timer
        # whose fire committed before fires took their timer (found again by its idempotency
        # key). A timer cancelled meanwhile, by that fire leaving its state or by another move,
        # stays cancelled.
        with writing(self._engine) as conn:
            conn.execute(
                update(tb.timers)
                .where(_t.id == timer_id, _t.status == _PENDING)
                .values(status="fired", fired_at=now)
            )

    def mark_void(self, timer_id: str, now: datetime) -> None:
        # A timer the case's move cancelled meanwhile stays cancelled: that says why it never fired.
        with writing(self._engine) as conn:
            conn.execute(
                update(tb.timers)
                .where(_t.id == timer_id, _t.status == "pending")
                .values(status="void", fired_at=now)
            )


class SqlTimerClaims:
    """Implements ``TimerClaims`` on the unit of work's connection: the fire of a deadline marks
    its timer fired in its own transaction, and only while the timer is pending. A caseworker's
    move that cancelled the timer after beat claimed it (a visit recorded, travel cancelled)
    leaves nothing to fire; on PostgreSQL the UPDATE waits for that move's transaction, so the
    two cannot both win."""

    def __init__(self, conn: Connection | Batch) -> None:
        self._conn = conn if isinstance(conn, Batch) else Batch(conn)

    def take(self, timer_id: str, case_id: str, now: datetime) -> bool:
        taken = self._conn.connection().execute(
            update(tb.timers)
            .where(_t.id == timer_id, _t.case_id == case_id, _t.status == _PENDING)
            .values(status="fired", fired_at=now)
        )
        return bool(taken.rowcount == 1)
