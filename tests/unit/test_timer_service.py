"""The timer service with a fake store and a fake transition service: what one batch does."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

import pytest

from tests.support import FixedClock
from workflow.domain.actors import SYSTEM_ACTOR, Actor
from workflow.domain.errors import GuardFailed, TransitionNotAllowed, UnknownCase, VersionConflict
from workflow.service_layer.timers import DueTimer, FiredCounts, TimerService
from workflow.service_layer.transitions import FireResult

CLOCK = FixedClock()


def timer(n: int) -> DueTimer:
    return DueTimer(f"timer-{n}", f"case-{n}", "handover_acknowledgement", "escalate_handover", CLOCK.now())


class FakeStore:
    def __init__(self, *timers: DueTimer) -> None:
        self.due = list(timers)
        self.claims: list[tuple[Any, int, timedelta]] = []
        self.marked: dict[str, str] = {}

    def claim_due(self, now: Any, limit: int, lease: timedelta) -> Sequence[DueTimer]:
        self.claims.append((now, limit, lease))
        taken, self.due = self.due[:limit], self.due[limit:]
        return taken

    def mark_fired(self, timer_id: str, now: Any) -> None:
        self.marked[timer_id] = "fired"

    def mark_void(self, timer_id: str, now: Any) -> None:
        self.marked[timer_id] = "void"


class FakeTransitions:
    """Answers each case id with an exception to raise, or a result (replayed or not)."""

    def __init__(self, outcomes: Mapping[str, Exception | bool] | None = None) -> None:
        self.outcomes = outcomes or {}
        self.calls: list[tuple[str, str, Actor, Any, str | None]] = []

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
    ) -> FireResult:
        assert timer_id is not None and idempotency_key == f"timer:{timer_id}"
        self.calls.append((case_id, trigger, actor, payload, idempotency_key))
        outcome = self.outcomes.get(case_id, False)
        if isinstance(outcome, Exception):
            raise outcome
        return FireResult(case_id, trigger, "handover_pending", "handover_pending", 9, ("e",), outcome)


def test_a_due_timer_fires_its_trigger_as_the_system_with_the_timer_as_idempotency_key() -> None:
    store, transitions = FakeStore(timer(1)), FakeTransitions()

    counts = TimerService(store, transitions, CLOCK).fire_due()

    assert counts == FiredCounts(claimed=1, fired=1)
    assert transitions.calls == [("case-1", "escalate_handover", SYSTEM_ACTOR, {}, "timer:timer-1")]
    assert store.marked == {"timer-1": "fired"}


def test_a_fire_that_had_committed_before_a_crash_is_only_marked() -> None:
    store = FakeStore(timer(1))

    counts = TimerService(store, FakeTransitions({"case-1": True}), CLOCK).fire_due()

    assert counts == FiredCounts(claimed=1, replayed=1)
    assert store.marked == {"timer-1": "fired"}


@pytest.mark.parametrize(
    "refusal",
    [
        TransitionNotAllowed("escalate_handover", "handed_over", ()),
        GuardFailed("remind_departure", ["the departure date has passed"]),
        UnknownCase("case-1"),
    ],
    ids=lambda e: e.code,
)
def test_a_refused_fire_voids_the_timer_and_the_batch_goes_on(refusal: Exception) -> None:
    store = FakeStore(timer(1), timer(2))

    counts = TimerService(store, FakeTransitions({"case-1": refusal}), CLOCK).fire_due()

    assert counts == FiredCounts(claimed=2, fired=1, void=1)
    assert store.marked == {"timer-1": "void", "timer-2": "fired"}


def test_a_concurrent_move_defers_the_timer_to_the_end_of_its_lease() -> None:
    store, transitions = FakeStore(timer(1)), FakeTransitions({"case-1": VersionConflict("case-1", 3, 4)})

    counts = TimerService(store, transitions, CLOCK).fire_due()

    assert counts == FiredCounts(claimed=1, deferred=1)
    assert store.marked == {}  # still pending: claimed again when the lease runs out


def test_an_unexpected_error_is_logged_and_the_batch_goes_on() -> None:
    store = FakeStore(timer(1), timer(2))

    counts = TimerService(store, FakeTransitions({"case-1": RuntimeError("db gone")}), CLOCK).fire_due()

    assert counts == FiredCounts(claimed=2, fired=1, failed=1)
    assert store.marked == {"timer-2": "fired"}


class TimeIsUp(Exception):
    """Stands for the worker's soft time limit (Celery's SoftTimeLimitExceeded is an Exception)."""


def test_an_error_the_caller_stops_on_ends_the_batch_and_leaves_the_rest_claimed() -> None:
    store = FakeStore(timer(1), timer(2), timer(3))
    transitions = FakeTransitions({"case-2": TimeIsUp()})

    counts = TimerService(store, transitions, CLOCK).fire_due(stop_on=(TimeIsUp,))

    assert counts == FiredCounts(claimed=3, fired=1)
    assert [call[0] for call in transitions.calls] == ["case-1", "case-2"]  # the third never tried
    assert store.marked == {"timer-1": "fired"}  # the others wait for their lease


def test_a_batch_claims_at_most_its_limit_with_the_lease_and_the_time_given() -> None:
    store = FakeStore(timer(1), timer(2), timer(3))
    lease = timedelta(minutes=2)
    later = CLOCK.now() + timedelta(days=1)

    counts = TimerService(store, FakeTransitions(), CLOCK, lease=lease).fire_due(later, limit=2)

    assert counts == FiredCounts(claimed=2, fired=2)
    assert store.claims == [(later, 2, lease)]
    assert [t.id for t in store.due] == ["timer-3"]


def test_counts_are_plain_json_for_the_task_result() -> None:
    assert FiredCounts(claimed=2, fired=1, void=1).to_json() == {
        "claimed": 2,
        "fired": 1,
        "replayed": 0,
        "void": 1,
        "deferred": 0,
        "failed": 0,
    }
