"""Durable timers on SQLite and PostgreSQL: a due row fires its transition once, through the service."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time as clock_time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import insert, select, update

from tests.conftest import REQUIRE_SERVICES, make_app
from tests.support import FixedClock, advance_to, register
from workflow.adapters import tables as tb
from workflow.adapters.timers import SqlTimerStore
from workflow.bootstrap import App
from workflow.demo import KBP_CASEWORKER, TLL_TRAVEL
from workflow.service_layer.handover import HandoverInbox
from workflow.service_layer.timers import DEFAULT_LEASE, DueTimer, FiredCounts, TimerService

REDIS_URL = os.environ.get("AVRR_TEST_TIMERS_REDIS_URL", "redis://127.0.0.1:6379/13")
ROOT = Path(__file__).resolve().parents[2]


def _timers(app: App, case_id: str, name: str | None = None) -> list[dict[str, Any]]:
    t = tb.timers.c
    query = select(tb.timers).where(t.case_id == case_id).order_by(t.created_at, t.due_at)
    if name:
        query = query.where(t.name == name)
    with app.db.connect() as conn:
        return [dict(row) for row in conn.execute(query).mappings()]


def _fired(app: App, case_id: str, trigger: str) -> int:
    return sum(1 for h in app.views.history(case_id) if h["trigger"] == trigger)


def _outbox(app: App, case_id: str) -> list[str]:
    o = tb.outbox.c
    with app.db.connect() as conn:
        return list(conn.scalars(select(o.event_type).where(o.case_id == case_id).order_by(o.id)))


def _departure_on(app: App, case_id: str) -> datetime:
    with app.db.connect() as conn:
        day = conn.scalar(select(tb.cases.c.departure_on).where(tb.cases.c.id == case_id))
    return datetime.combine(day, time(), UTC)


def _due(app: App, clock: FixedClock, case_id: str, name: str) -> dict[str, Any]:
    """Moves the clock to the timer's due time and returns the timer."""
    (timer,) = _timers(app, case_id, name)
    clock.current = timer["due_at"]
    return timer


def test_a_due_timer_fires_its_transition_once(app: App, clock: FixedClock) -> None:
    case_id = advance_to(app, "handover_pending")
    timer = _due(app, clock, case_id, "handover_acknowledgement")

    first, second = app.timers.fire_due(), app.timers.fire_due()

    assert first == FiredCounts(claimed=1, fired=1)
    assert second == FiredCounts()
    assert _fired(app, case_id, "escalate_handover") == 1
    assert _outbox(app, case_id).count("HandoverEscalated") == 1
    old, new = _timers(app, case_id, "handover_acknowledgement")
    assert (old["id"], old["status"], old["fired_at"]) == (timer["id"], "fired", clock.now())
    assert old["due_at"] == timer["due_at"]  # the claim kept the real deadline
    # The escalation re-armed the deadline: the office is reminded again a period later.
    assert (new["status"], new["due_at"]) == ("pending", clock.now() + timedelta(days=5))


def test_a_timer_fired_again_after_a_crash_before_it_was_marked_moves_the_case_once(
    app: App, clock: FixedClock
) -> None:
    case_id = advance_to(app, "handover_pending")
    timer = _due(app, clock, case_id, "handover_acknowledgement")
    app.timers.fire_due()
    # The crash: the transition committed, the timer row never heard of it (still claimed).
    with app.db.begin() as conn:
        conn.execute(
            update(tb.timers).where(tb.timers.c.id == timer["id"]).values(status="pending", fired_at=None)
        )
    assert app.timers.fire_due() == FiredCounts()  # its lease has not run out yet
    clock.advance(seconds=DEFAULT_LEASE.total_seconds())

    again = app.timers.fire_due()

    assert again == FiredCounts(claimed=1, replayed=1)
    assert _fired(app, case_id, "escalate_handover") == 1
    assert _outbox(app, case_id).count("HandoverEscalated") == 1
    assert _timers(app, case_id, "handover_acknowledgement")[0]["status"] == "fired"


def test_a_timer_not_yet_due_does_not_fire(app: App, clock: FixedClock) -> None:
    case_id = advance_to(app, "handover_pending")
    _due(app, clock, case_id, "handover_acknowledgement")
    clock.advance(seconds=-1)

    assert app.timers.fire_due() == FiredCounts()
    assert _fired(app, case_id, "escalate_handover") == 0
    assert _timers(app, case_id, "handover_acknowledgement")[0]["status"] == "pending"


def test_moving_a_case_on_cancels_its_timers_and_they_never_fire(app: App, clock: FixedClock) -> None:
    case_id = advance_to(app, "handover_pending")
    app.transitions.fire(case_id, "accept_handover", KBP_CASEWORKER)
    _due(app, clock, case_id, "handover_acknowledgement")
    clock.advance(days=1)

    assert app.timers.fire_due() == FiredCounts()
    assert _fired(app, case_id, "escalate_handover") == 0
    assert _timers(app, case_id, "handover_acknowledgement")[0]["status"] == "cancelled"


def test_a_handed_over_case_keeps_its_deadlines_in_the_deployment_that_owns_it(
    app: App, clock: FixedClock
) -> None:
    """Kyiv is another deployment (it has a webhook URL). Its signed acceptance moves Tallinn's
    copy of the case to handed_over, which arms the returnee-contact deadline on that copy too;
    the contact is recorded in Kyiv's deployment, so Tallinn's copy must not escalate it."""
    with app.db.begin() as conn:
        conn.execute(
            update(tb.offices)
            .where(tb.offices.c.code == "kyiv")
            .values(webhook_url="https://kyiv.example/in")
        )
    case_id = advance_to(app, "handover_pending")
    decision = {
        "type": "avrr.handover.decision.v1",
        "event_id": str(uuid.uuid4()),
        "case_id": case_id,
        "from_office": "kyiv",
        "to_office": "tallinn",
        "decision": "accepted",
    }
    HandoverInbox(app.uow, app.transitions, app.clock).receive("decision-1", json.dumps(decision).encode())
    assert app.views.case(case_id)["state"] == "handed_over"
    _due(app, clock, case_id, "returnee_contact")

    assert app.timers.fire_due() == FiredCounts(claimed=1, void=1)
    assert app.views.case(case_id)["state"] == "handed_over"
    assert "ReturneeContactEscalated" not in _outbox(app, case_id)
    assert _timers(app, case_id, "returnee_contact")[0]["status"] == "void"


def test_a_timer_the_case_cancelled_after_beat_claimed_it_does_not_fire(app: App, clock: FixedClock) -> None:
    """Beat claims the due monitoring-visit deadline; before its fire runs, the caseworker
    records the visit (cancelling that timer and arming the next). The fire finds its timer no
    longer pending: no escalation, the old timer stays cancelled, the new one stays armed."""
    case_id = advance_to(app, "monitoring")
    _due(app, clock, case_id, "monitoring_visit")
    visit = {"visited_on": str(clock.now().date()), "kind": "home_visit", "plan_on_track": True}

    class VisitRecordedAfterTheClaim(SqlTimerStore):
        def claim_due(self, now: datetime, limit: int, lease: timedelta) -> list[DueTimer]:
            claimed = list(super().claim_due(now, limit, lease))
            app.transitions.fire(case_id, "record_monitoring_visit", KBP_CASEWORKER, visit)
            return claimed

    counts = TimerService(VisitRecordedAfterTheClaim(app.db), app.transitions, clock).fire_due()

    assert counts == FiredCounts(claimed=1, void=1)
    assert _fired(app, case_id, "escalate_monitoring") == 0
    assert "MonitoringVisitEscalated" not in _outbox(app, case_id)
    old, new = _timers(app, case_id, "monitoring_visit")
    assert (old["status"], new["status"]) == ("cancelled", "pending")
    assert new["due_at"] > clock.now()


def test_the_departure_reminder_fires_before_departure_and_its_event_is_in_the_outbox(
    app: App, clock: FixedClock
) -> None:
    case_id = advance_to(app, "travel_booked")
    timer = _due(app, clock, case_id, "departure_reminder")
    assert timer["due_at"] == _departure_on(app, case_id) - timedelta(days=2)  # the default lead

    assert app.timers.fire_due() == FiredCounts(claimed=1, fired=1)

    assert _fired(app, case_id, "remind_departure") == 1
    assert _outbox(app, case_id)[-1] == "DepartureReminderIssued"
    assert app.views.case(case_id)["state"] == "travel_booked"
    assert app.views.case(case_id)["timers"] == []  # one reminder per booking, not one a period
    assert _timers(app, case_id, "departure_reminder")[0]["status"] == "fired"


def test_the_reminder_lead_is_a_programme_setting(db_url: str, clock: FixedClock) -> None:
    app = make_app(db_url, clock, departure_reminder_days=5)
    try:
        case_id = advance_to(app, "travel_booked")
        (timer,) = _timers(app, case_id, "departure_reminder")
        assert timer["due_at"] == _departure_on(app, case_id) - timedelta(days=5)
    finally:
        app.db.dispose()


def test_a_reminder_due_after_the_departure_is_cancelled_by_the_departure(
    app: App, clock: FixedClock
) -> None:
    case_id = advance_to(app, "travel_booked")
    app.transitions.fire(case_id, "confirm_departure", TLL_TRAVEL)
    _due(app, clock, case_id, "departure_reminder")

    assert app.timers.fire_due() == FiredCounts()
    assert _fired(app, case_id, "remind_departure") == 0
    assert _timers(app, case_id, "departure_reminder")[0]["status"] == "cancelled"


def test_a_refused_fire_marks_the_timer_void_and_the_batch_goes_on(app: App, clock: FixedClock) -> None:
    late = advance_to(app, "travel_booked")
    due = advance_to(app, "handover_pending")
    # Beat was down until after the departure day, and nobody recorded the departure.
    clock.current = _departure_on(app, late) + timedelta(days=1)
    assert clock.now() >= _timers(app, due)[-1]["due_at"]

    counts = app.timers.fire_due()

    assert counts == FiredCounts(claimed=2, fired=1, void=1)
    assert _fired(app, late, "remind_departure") == 0
    reminder = _timers(app, late, "departure_reminder")[0]
    assert (reminder["status"], reminder["fired_at"]) == ("void", clock.now())
    assert _fired(app, due, "escalate_handover") == 1


def test_a_timer_for_a_state_the_case_is_not_in_is_void(app: App, clock: FixedClock) -> None:
    case_id = register(app).case_id
    timer_id = str(uuid.uuid4())
    with app.db.begin() as conn:
        conn.execute(
            insert(tb.timers).values(
                id=timer_id,
                case_id=case_id,
                name="handover_acknowledgement",
                state="handover_pending",
                due_at=clock.now(),
                fires_trigger="escalate_handover",
                status="pending",
                created_at=clock.now(),
            )
        )

    assert app.timers.fire_due() == FiredCounts(claimed=1, void=1)
    assert _timers(app, case_id)[0]["status"] == "void"
    assert [h["trigger"] for h in app.views.history(case_id)] == ["register_inquiry"]


def test_a_timer_claimed_by_a_beat_that_died_is_claimed_again_after_the_lease(
    app: App, clock: FixedClock
) -> None:
    case_id = advance_to(app, "handover_pending")
    _due(app, clock, case_id, "handover_acknowledgement")
    assert len(SqlTimerStore(app.db).claim_due(clock.now(), 10, DEFAULT_LEASE)) == 1  # then it died

    assert app.timers.fire_due() == FiredCounts()  # leased: a live beat run may be firing it
    clock.advance(seconds=DEFAULT_LEASE.total_seconds())
    assert app.timers.fire_due() == FiredCounts(claimed=1, fired=1)
    assert _fired(app, case_id, "escalate_handover") == 1


def test_a_batch_takes_at_most_its_limit_oldest_first(app: App, clock: FixedClock) -> None:
    first = advance_to(app, "handover_pending")
    clock.advance(minutes=1)
    second = advance_to(app, "handover_pending")
    _due(app, clock, second, "handover_acknowledgement")

    assert app.timers.fire_due(limit=1) == FiredCounts(claimed=1, fired=1)
    assert (_fired(app, first, "escalate_handover"), _fired(app, second, "escalate_handover")) == (1, 0)
    assert app.timers.fire_due(limit=1) == FiredCounts(claimed=1, fired=1)
    assert _fired(app, second, "escalate_handover") == 1


@pytest.mark.postgres
def test_overlapping_beat_runs_fire_each_timer_once(pg_app: App, clock: FixedClock) -> None:
    cases = [advance_to(pg_app, "handover_pending") for _ in range(6)]
    _due(pg_app, clock, cases[-1], "handover_acknowledgement")
    results: list[FiredCounts] = []
    start = threading.Barrier(4)

    def beat_run() -> None:
        start.wait()
        while (counts := pg_app.timers.fire_due(limit=1)).claimed:
            results.append(counts)

    threads = [threading.Thread(target=beat_run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert sum(r.fired for r in results) == 6
    assert sum(r.claimed for r in results) == 6  # SKIP LOCKED: no row went to two runs
    assert [_fired(pg_app, case_id, "escalate_handover") for case_id in cases] == [1] * 6


# -- beat and a worker, as real processes --------------------------------------------------------


@pytest.fixture
def broker() -> str:
    try:
        redis.Redis.from_url(REDIS_URL).flushdb()
    except redis.ConnectionError as exc:
        (pytest.fail if REQUIRE_SERVICES else pytest.skip)(f"Redis at {REDIS_URL} unreachable: {exc}")
    return REDIS_URL


def _celery(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers.app", *command],
            cwd=ROOT,
            env=os.environ | env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@pytest.fixture
def celery_env(pg_url: str, broker: str) -> dict[str, str]:
    return {
        "AVRR_DATABASE_URL": pg_url,
        "AVRR_BROKER_URL": broker,
        "AVRR_LOG_LEVEL": "WARNING",
        "AVRR_TIMER_POLL_SECONDS": "1",
    }


def _wait_for(condition: Any, timeout: float = 60.0) -> None:
    deadline = clock_time.monotonic() + timeout
    while not condition():
        if clock_time.monotonic() > deadline:
            raise AssertionError("timed out")
        clock_time.sleep(0.2)


@pytest.fixture
def stop_all() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.mark.postgres
@pytest.mark.slow
def test_a_timer_that_fell_due_while_no_worker_ran_fires_once_when_they_start(
    pg_app: App, celery_env: dict[str, str], tmp_path: Path, stop_all: list[subprocess.Popen[bytes]]
) -> None:
    case_id = advance_to(pg_app, "handover_pending")
    (timer,) = _timers(pg_app, case_id, "handover_acknowledgement")
    # It fell due an hour ago, while neither beat nor any worker ran: no message exists for it.
    with pg_app.db.begin() as conn:
        conn.execute(
            update(tb.timers)
            .where(tb.timers.c.id == timer["id"])
            .values(due_at=datetime.now(UTC) - timedelta(hours=1))
        )

    worker = ["worker", "-c", "2", "--without-gossip", "--without-mingle", "-l", "warning"]
    stop_all.append(_celery(worker, celery_env, tmp_path / "worker.log"))
    beat = ["beat", "-s", str(tmp_path / "beat-schedule"), "--max-interval", "1", "-l", "warning"]
    stop_all.append(_celery(beat, celery_env, tmp_path / "beat.log"))

    _wait_for(lambda: _timers(pg_app, case_id, "handover_acknowledgement")[0]["status"] == "fired")
    clock_time.sleep(3)  # several more ticks: none fires it again

    assert _fired(pg_app, case_id, "escalate_handover") == 1
    assert _outbox(pg_app, case_id).count("HandoverEscalated") == 1
    statuses = [t["status"] for t in _timers(pg_app, case_id, "handover_acknowledgement")]
    assert statuses == ["fired", "pending"]  # re-armed for the next period, not due yet
    assert all(proc.poll() is None for proc in stop_all), (tmp_path / "worker.log").read_text()
