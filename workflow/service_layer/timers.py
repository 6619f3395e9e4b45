"""Fires the deadlines that fell due: timer rows claimed in batches, each fired once as the system.

A claim is committed before the fire, so a fire never runs inside the claim's row locks (its own
transaction cancels and re-arms timer rows). The claim is a lease: a timer whose firing beat died
is claimed again once the lease runs out, and the idempotency key ``timer:<id>`` makes that second
fire answer with the first one's result instead of moving the case twice. The fire takes its
timer (pending to fired) in its own transaction: a caseworker's move that cancelled the timer
after the claim (a visit recorded, travel cancelled) leaves nothing to fire, and the timer is
counted void and stays cancelled.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import structlog

from workflow.domain.actors import SYSTEM_ACTOR, Actor
from workflow.domain.errors import DomainError, VersionConflict
from workflow.service_layer.ports import Clock
from workflow.service_layer.transitions import FireResult

log = structlog.get_logger(__name__)

# Far above the time a batch takes to fire (milliseconds a timer), far below any deadline's length.
DEFAULT_LEASE = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class DueTimer:
    id: str
    case_id: str
    name: str
    fires_trigger: str
    due_at: datetime


class TimerStore(Protocol):
    def claim_due(self, now: datetime, limit: int, lease: timedelta) -> Sequence[DueTimer]:
        """Pending timers due by ``now`` and not claimed within ``lease``, oldest first; claims
        them (committed before returning) so that no concurrent caller gets the same ones."""
        ...

    def mark_fired(self, timer_id: str, now: datetime) -> None: ...

    def mark_void(self, timer_id: str, now: datetime) -> None:
        """The fire was refused: a still pending timer will never fire."""
        ...


class Fires(Protocol):
    """The transition service, as far as the timers use it."""

    def fire(
        self,
        case_id: str,
        trigger: str,
        actor: Actor,
        payload: Mapping[str, Any] | None = None,
        expected_version: int | None = None,
        idempotency_key: str | None = None,
        request_id: str | None = None,
        timer_id: str | None = None,
    ) -> FireResult: ...


@dataclass(frozen=True, slots=True)
class FiredCounts:
    """What one batch did; ``replayed`` fires had committed before a crash and were only marked."""

    claimed: int = 0
    fired: int = 0
    replayed: int = 0
    void: int = 0
    deferred: int = 0  # the case moved under the fire: tried again once the lease runs out
    failed: int = 0  # not a refusal (database down, a bug): tried again once the lease runs out

    def to_json(self) -> dict[str, int]:
        return asdict(self)


def idempotency_key(timer_id: str) -> str:
    return f"timer:{timer_id}"


class TimerService:
    def __init__(
        self, store: TimerStore, transitions: Fires, clock: Clock, lease: timedelta = DEFAULT_LEASE
    ) -> None:
        self._store, self._transitions, self._clock, self._lease = store, transitions, clock, lease

    def fire_due(
        self, now: datetime | None = None, limit: int = 100, stop_on: tuple[type[BaseException], ...] = ()
    ) -> FiredCounts:
        """Fires up to ``limit`` due timers; one timer's failure never stops the others. An
        error of ``stop_on`` (the worker's soft time limit) ends the batch there: the timers not
        fired yet are claimed again once their lease runs out."""
        timers = self._store.claim_due(now or self._clock.now(), limit, self._lease)
        outcomes: Counter[str] = Counter()
        for index, timer in enumerate(timers):
            try:
                outcomes[self._fire(timer, stop_on)] += 1
            except stop_on as exc:
                log.warning("timers.batch_cut", error=type(exc).__name__, not_fired=len(timers) - index)
                break
        counts = FiredCounts(claimed=len(timers), **outcomes)
        if timers:
            log.info("timers.batch_fired", **counts.to_json())
        return counts

    def _fire(self, timer: DueTimer, stop_on: tuple[type[BaseException], ...] = ()) -> str:
        with structlog.contextvars.bound_contextvars(
            case_id=timer.case_id, timer=timer.name, timer_id=timer.id, trigger=timer.fires_trigger
        ):
            try:
                return self._fire_once(timer)
            except stop_on:
                raise
            except Exception:
                log.exception("timer.fire_failed")
                return "failed"

    def _fire_once(self, timer: DueTimer) -> str:
        try:
            result = self._transitions.fire(
                timer.case_id,
                timer.fires_trigger,
                SYSTEM_ACTOR,
                payload={},
                idempotency_key=idempotency_key(timer.id),
                timer_id=timer.id,
            )
        except VersionConflict:
            log.info("timer.fire_deferred", reason="version_conflict")
            return "deferred"
        except DomainError as error:
            # The case moved on, or the rule no longer holds: this deadline has nothing to do.
            self._store.mark_void(timer.id, self._clock.now())
            log.info("timer.voided", error=error.code)
            return "void"
        self._store.mark_fired(timer.id, self._clock.now())
        log.info("timer.fired", version=result.version, replayed=result.replayed)
        return "replayed" if result.replayed else "fired"
