"""The ports the service layer needs; adapters implement them, tests pass fakes."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Protocol, Self

from workflow.domain.case import Case
from workflow.domain.events import Event


class DuplicateIdempotencyKey(Exception):
    """Raised by the store when a concurrent request committed the same key first."""


class Clock(Protocol):
    def now(self) -> datetime: ...


class TransitionObserver(Protocol):
    """Told of every fire's outcome, for metrics: labels only, never ids or payloads."""

    def fired(self, trigger: str, outcome: str) -> None:
        """``trigger``: a trigger of the lifecycle, or ``unknown`` for a name it does not have;
        ``outcome``: ``ok``, ``replayed`` (an idempotent repeat), the refusal's error code, or
        ``error`` (anything else raised, say the database being away)."""
        ...


class JobObserver(Protocol):
    """Told when a job of the workers finishes, for metrics."""

    def job_finished(self, effect: str, outcome: str, latency_s: float | None) -> None:
        """``outcome``: ``done`` or ``dead``; ``latency_s``: from the event's commit to the job's
        ``done`` commit, when the job knows when its event was committed."""
        ...


class NoObserver:
    """The default observer: metrics off (unit tests, scripts)."""

    def fired(self, trigger: str, outcome: str) -> None:
        pass

    def job_finished(self, effect: str, outcome: str, latency_s: float | None) -> None:
        pass


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    case_id: str
    version: int
    trigger: str
    from_state: str | None
    to_state: str
    actor_id: str
    actor_office: str | None
    reason: str | None
    payload: dict[str, Any]
    request_id: str | None
    lifecycle_version: str
    occurred_at: datetime


@dataclass(frozen=True, slots=True)
class StoredResponse:
    request_hash: str
    response: dict[str, Any]


class CaseRepository(Protocol):
    def get(self, case_id: str, lock: bool = False) -> Case | None:
        """``lock``: the row stays locked until the unit of work ends (PostgreSQL)."""
        ...

    def load_parts(self, case: Case, parts: Iterable[str]) -> None: ...
    def office_exists(self, code: str) -> bool: ...
    def add(self, case: Case, now: datetime) -> None: ...
    def update(self, case: Case, now: datetime) -> None:
        """Write the case at ``case.version`` if the stored row is still at ``case.version - 1``."""
        ...


class HistoryLog(Protocol):
    def append(self, entry: HistoryEntry) -> None: ...
    def for_case(self, case_id: str) -> Sequence[HistoryEntry]: ...


class Outbox(Protocol):
    def add(self, events: Sequence[Event]) -> None: ...


class IdempotencyStore(Protocol):
    def get(self, key: str) -> StoredResponse | None: ...
    def add(
        self,
        key: str,
        actor_id: str,
        request_hash: str,
        case_id: str,
        response: dict[str, Any],
        now: datetime,
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class InboundDelivery:
    """A signed delivery from another deployment, kept so that its redelivery changes nothing."""

    key: str  # the sender's Idempotency-Key
    kind: str
    case_id: str
    from_office: str
    body_digest: str  # SHA-256 of the body: the same key with another body is refused
    received_at: datetime


class InboundStore(Protocol):
    def get(self, key: str) -> InboundDelivery | None: ...
    def add(self, delivery: InboundDelivery) -> None:
        """Raises ``DuplicateIdempotencyKey`` when a concurrent delivery of the key committed first."""
        ...

    def served_here(self, office: str) -> bool | None:
        """True for an office of this deployment, False for one another deployment serves (it has
        a webhook URL), None for an office this deployment does not know."""
        ...


class TimerClaims(Protocol):
    def take(self, timer_id: str, case_id: str, now: datetime) -> bool:
        """Marks the case's timer fired if it is still pending, in the unit of work's
        transaction; False when it is not (the case's move cancelled it, or it fired)."""
        ...


class UnitOfWork(Protocol):
    cases: CaseRepository
    history: HistoryLog
    outbox: Outbox
    idempotency: IdempotencyStore
    inbound: InboundStore
    timers: TimerClaims

    def __enter__(self) -> Self: ...
    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...
    def commit(self) -> None: ...
    def rollback(self) -> None: ...
