"""OpsViews, the ops read model, on SQLite and PostgreSQL: what the one screen counts, the lists that
need a person, and one case's timeline, each read back from state the services made."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, select, update

from tests.support import REGISTRATION, FixedClock, advance_to, jobs_of, register
from workflow.adapters import tables as tb
from workflow.adapters.jobs import SqlDeadLetters, SqlJobStore
from workflow.adapters.ops_views import (
    OVERDUE_GRACE,
    OpsStatus,
    OpsViews,
    OverdueTimer,
    StateCount,
    StuckCase,
)
from workflow.bootstrap import App
from workflow.demo import KBP_CASEWORKER, STEPS, TLL_TRAVEL
from workflow.domain.actors import SYSTEM_ACTOR, Actor, Role
from workflow.domain.effects import effect_named
from workflow.domain.errors import UnknownCase
from workflow.domain.lifecycle import LIFECYCLE
from workflow.service_layer.effects import Job

o, t = tb.outbox.c, tb.timers.c
SECOND = timedelta(seconds=1)


def events_of(app: App, case_id: str) -> list[str]:
    with app.db.connect() as conn:
        return list(conn.scalars(select(o.event_id).where(o.case_id == case_id).order_by(o.id)))


def mark_sent(app: App, event_ids: list[str], at: datetime) -> None:
    """What the relay does once the broker has the events."""
    with app.db.begin() as conn:
        conn.execute(update(tb.outbox).where(o.event_id.in_(event_ids)).values(sent_at=at))


def timer_due(app: App, case_id: str, name: str) -> datetime:
    with app.db.connect() as conn:
        due: datetime = conn.execute(
            select(t.due_at).where(t.case_id == case_id, t.name == name, t.status == "pending")
        ).scalar_one()
    return due


# -- the one screen ----------------------------------------------------------------------------


def test_an_engine_without_cases_has_nothing_waiting(app: App, clock: FixedClock) -> None:
    assert OpsViews(app.db).status(clock.now()) == OpsStatus(
        at=clock.now(),
        outbox_backlog=0,
        outbox_oldest_age_s=None,
        jobs_running=0,
        dead_letters_open=0,
        timers_due=0,
        timers_overdue=0,
        stuck_cases=0,
        cases_by_state=[],
    )


def test_the_outbox_backlog_and_the_age_of_its_oldest_unsent_event(app: App, clock: FixedClock) -> None:
    start = clock.now()
    first = register(app).case_id
    clock.advance(minutes=10)
    second = advance_to(app, "application_submitted")
    first_events, second_events = events_of(app, first), events_of(app, second)
    assert len(first_events) >= 1 and len(second_events) >= 3
    views, now = OpsViews(app.db), start + timedelta(minutes=30)

    status = views.status(now)
    assert (status.outbox_backlog, status.outbox_oldest_age_s) == (len(first_events + second_events), 1800.0)
    assert views.outbox_lag(now) == (len(first_events + second_events), 1800.0)

    mark_sent(app, first_events, now)
    assert views.outbox_lag(now) == (len(second_events), 1200.0)
    # A reader whose clock is behind the writer's sees age 0, never a negative age.
    assert views.outbox_lag(start + timedelta(minutes=5)) == (len(second_events), 0.0)

    mark_sent(app, second_events, now)
    assert views.outbox_lag(now) == (0, None)
    assert views.status(now).outbox_oldest_age_s is None


def test_running_jobs_and_open_dead_letters(app: App, clock: FixedClock) -> None:
    case_id = advance_to(app, "return_approved")
    done, failing, refused = jobs_of(app, case_id)[:3]
    views, now = OpsViews(app.db), clock.now()

    SqlJobStore(app.db).start(done, now)
    SqlJobStore(app.db).start(failing, now)
    assert (views.status(now).jobs_running, views.status(now).dead_letters_open) == (2, 0)

    SqlJobStore(app.db).finish(done, "done", None, now)
    SqlJobStore(app.db).dead_letter(failing, "TransientDeliveryError: SMTP connection failed", now)
    # Refused before it started: filed with no attempt.
    SqlJobStore(app.db).dead_letter(refused, "UnknownEffect: not in this version", now + SECOND)
    status = views.status(now)
    assert (status.jobs_running, status.dead_letters_open) == (0, 2)
    letters = views.dead_letters()
    assert [(d.event_id, d.effect, d.case_id, d.attempts, d.error) for d in letters] == [
        (failing.event_id, failing.effect, case_id, 1, "TransientDeliveryError: SMTP connection failed"),
        (refused.event_id, refused.effect, case_id, 0, "UnknownEffect: not in this version"),
    ]
    assert letters[0].dead_at == now and letters[1].dead_at == now + SECOND
    assert views.dead_letters(limit=1) == letters[:1]

    queued: list[Job] = []
    SqlDeadLetters(app.db).replay([letters[0].id], now, queued.append)
    assert queued == [failing]
    status = views.status(now)
    # The replayed job waits on the queue (pending): not running, and its letter is closed.
    assert (status.jobs_running, status.dead_letters_open) == (0, 1)
    assert [d.id for d in views.dead_letters()] == [letters[1].id]


def test_timers_are_due_at_their_time_and_overdue_after_the_grace(app: App, clock: FixedClock) -> None:
    first = advance_to(app, "handover_pending")
    clock.advance(hours=1)
    second = advance_to(app, "handover_pending")
    due = timer_due(app, first, "handover_acknowledgement")
    assert due == clock.now() - timedelta(hours=1) + timedelta(days=5)  # AVRR_HANDOVER_ACK_DAYS
    views = OpsViews(app.db)

    def counts(now: datetime) -> tuple[int, int]:
        status = views.status(now)
        return status.timers_due, status.timers_overdue

    assert counts(due - SECOND) == (0, 0)
    assert counts(due) == (1, 0)
    assert counts(due + OVERDUE_GRACE - SECOND) == (1, 0)
    assert views.overdue_timers(due + OVERDUE_GRACE - SECOND) == []
    assert counts(due + OVERDUE_GRACE) == (1, 1)
    assert [x.case_id for x in views.overdue_timers(due + OVERDUE_GRACE)] == [first]
    assert counts(due + timedelta(hours=1)) == (2, 1)  # the second is due, not yet overdue
    assert OpsViews(app.db, overdue_grace=timedelta(0)).status(due).timers_overdue == 1

    later = due + timedelta(hours=3)
    overdue = views.overdue_timers(later)
    assert overdue == [
        OverdueTimer(
            first, "handover_acknowledgement", "handover_pending", "escalate_handover", due, 3 * 3600.0
        ),
        OverdueTimer(
            second,
            "handover_acknowledgement",
            "handover_pending",
            "escalate_handover",
            due + timedelta(hours=1),
            2 * 3600.0,
        ),
    ]
    assert views.overdue_timers(later, limit=1) == overdue[:1]

    # Accepting the handover cancels its deadline (and arms the returnee contact, months away).
    app.transitions.fire(first, "accept_handover", KBP_CASEWORKER, {})
    assert counts(later) == (1, 1)
    assert [timer.case_id for timer in views.overdue_timers(later)] == [second]


# -- stuck cases --------------------------------------------------------------------------------


def _assert_stuck_only_past_its_limit(views: OpsViews, app: App, case_id: str, since: datetime) -> str:
    """The case is not stuck while idle for exactly its state's limit, and is one second later."""
    case = app.views.case(case_id)
    limit = LIFECYCLE.by_state[case["state"]].stuck_after
    if limit is None:  # final: never stuck
        assert case_id not in [s.case_id for s in views.stuck_cases(since + timedelta(days=3650))]
        return str(case["state"])
    assert case_id not in [s.case_id for s in views.stuck_cases(since + limit)]
    mine = [s for s in views.stuck_cases(since + limit + SECOND) if s.case_id == case_id]
    assert mine == [
        StuckCase(
            case_id,
            case["state"],
            case["owner_office"],
            since,
            (limit + SECOND).total_seconds(),
            limit.total_seconds(),
        )
    ], case["state"]
    return str(case["state"])


def test_a_case_is_stuck_once_idle_longer_than_its_state_allows(app: App, clock: FixedClock) -> None:
    """Every state of the lifecycle with a limit, at the second either side of it; idle time counts
    from the case's last transition, not from its creation."""
    views = OpsViews(app.db)
    checked = set()
    case_id = register(app).case_id
    for step in STEPS:
        checked.add(_assert_stuck_only_past_its_limit(views, app, case_id, clock.now()))
        clock.advance(minutes=1)
        view = app.views.case(case_id)
        app.transitions.fire(
            case_id, step.trigger, step.actor, step.payload(view) if callable(step.payload) else step.payload
        )
    checked.add(_assert_stuck_only_past_its_limit(views, app, case_id, clock.now()))

    # The two the seed story does not pass through: a no-show, and a returnee not heard from.
    clock.advance(minutes=1)
    no_show = advance_to(app, "travel_booked")
    app.transitions.fire(no_show, "record_no_show", TLL_TRAVEL, {"reason": "missed the train"})
    checked.add(_assert_stuck_only_past_its_limit(views, app, no_show, clock.now()))
    silent = advance_to(app, "handed_over")
    app.transitions.fire(silent, "escalate_missed_contact", SYSTEM_ACTOR, {})
    checked.add(_assert_stuck_only_past_its_limit(views, app, silent, clock.now()))

    with_limit = {s.name for s in LIFECYCLE.states if s.stuck_after is not None}
    assert with_limit <= checked, with_limit - checked
    assert "closed" in checked


def test_stuck_cases_come_oldest_first_and_are_counted(app: App, clock: FixedClock) -> None:
    start = clock.now()
    oldest = register(app).case_id  # inquiry: 30 days
    clock.advance(days=1)
    submitted = advance_to(app, "application_submitted")  # 14 days
    clock.advance(days=1)
    recent = register(app).case_id
    views, now = OpsViews(app.db), start + timedelta(days=31, hours=12)

    stuck = views.stuck_cases(now)
    assert [(s.case_id, s.state, s.owner_office) for s in stuck] == [
        (oldest, "inquiry", "tallinn"),
        (submitted, "application_submitted", "tallinn"),
    ]
    assert [(s.idle_s, s.allowed_s) for s in stuck] == [
        (timedelta(days=31, hours=12).total_seconds(), timedelta(days=30).total_seconds()),
        (timedelta(days=30, hours=12).total_seconds(), timedelta(days=14).total_seconds()),
    ]
    assert views.status(now).stuck_cases == 2
    assert views.stuck_cases(now, limit=1) == stuck[:1]
    assert views.stuck_cases(now, state="application_submitted") == stuck[1:]
    assert views.stuck_cases(now, state="closed") == []
    # One day later the third inquiry passes its 30 days as well.
    assert [s.case_id for s in views.stuck_cases(now + timedelta(days=1))] == [oldest, submitted, recent]


# -- counts and recent jobs ---------------------------------------------------------------------


def test_cases_by_state_and_owner_office(app: App, clock: FixedClock) -> None:
    register(app)
    register(app)
    riga = Actor.of("riga-caseworker", "riga", Role.CASEWORKER)
    app.transitions.create_case(riga, {**REGISTRATION, "origin_office": "riga"})
    advance_to(app, "handed_over")  # Kyiv's once accepted
    views = OpsViews(app.db)

    expected = [
        StateCount("handed_over", "kyiv", 1),
        StateCount("inquiry", "riga", 1),
        StateCount("inquiry", "tallinn", 2),
    ]
    assert views.cases_by_state() == expected
    assert views.status(clock.now()).cases_by_state == expected
    assert views.status(clock.now(), with_counts=False).cases_by_state == []
    with app.db.connect() as conn:
        assert sum(n.count for n in expected) == conn.scalar(select(func.count()).select_from(tb.cases))


def test_recent_jobs_come_newest_first_running_ones_included(app: App, clock: FixedClock) -> None:
    case_id = advance_to(app, "return_approved")
    done, dead, running = jobs_of(app, case_id)[:3]
    start = clock.now()
    SqlJobStore(app.db).start(done, start)
    SqlJobStore(app.db).finish(done, "done", None, start + SECOND)
    SqlJobStore(app.db).start(dead, start + timedelta(minutes=1))
    SqlJobStore(app.db).dead_letter(
        dead, "PermanentDeliveryError: recipient refused", start + timedelta(minutes=2)
    )
    SqlJobStore(app.db).start(running, start + timedelta(minutes=3))
    views = OpsViews(app.db)

    runs = views.recent_jobs()
    assert [(r.event_id, r.effect, r.status, r.attempts, r.started_at, r.finished_at) for r in runs] == [
        (running.event_id, running.effect, "running", 1, start + timedelta(minutes=3), None),
        (dead.event_id, dead.effect, "dead", 1, start + timedelta(minutes=1), start + timedelta(minutes=2)),
        (done.event_id, done.effect, "done", 1, start, start + SECOND),
    ]
    assert [r.last_error for r in runs] == [None, "PermanentDeliveryError: recipient refused", None]
    assert [(r.case_id, r.event_type) for r in runs] == [
        (case_id, job.event_type) for job in (running, dead, done)
    ]
    assert views.recent_jobs(limit=2) == runs[:2]


# -- one case -----------------------------------------------------------------------------------


def test_a_timeline_shows_the_history_events_jobs_timers_and_tasks_of_one_case(
    app: App, clock: FixedClock
) -> None:
    case_id = advance_to(app, "handover_pending")
    other = advance_to(app, "return_approved")
    (job, *_) = jobs_of(app, case_id)
    SqlJobStore(app.db).start(job, clock.now())
    SqlJobStore(app.db).finish(job, "done", None, clock.now())
    SqlJobStore(app.db).start(jobs_of(app, other)[0], clock.now())  # another case's: not shown
    opened = [j for j in jobs_of(app, case_id) + jobs_of(app, other) if j.effect.startswith("create_task")]
    for task_job in opened:  # the other case's task is not shown
        effect = effect_named(task_job.event_type, task_job.effect)
        assert effect is not None
        SqlJobStore(app.db).start(task_job, clock.now())
        SqlJobStore(app.db).create_task_once(task_job, effect, clock.now())
    with app.db.connect() as conn:
        notice = conn.scalar(
            select(tb.tasks.c.id).where(
                tb.tasks.c.case_id == case_id, tb.tasks.c.kind == "pre_arrival_notice"
            )
        )
    app.tasks.complete(notice, TLL_TRAVEL)
    events = events_of(app, case_id)
    mark_sent(app, events[:2], clock.now() + SECOND)

    timeline = OpsViews(app.db).timeline(case_id)

    history = app.views.history(case_id)
    assert [(s.version, s.trigger, s.from_state, s.to_state, s.actor_id) for s in timeline.history] == [
        (h["version"], h["trigger"], h["from_state"], h["to_state"], h["actor_id"]) for h in history
    ]
    assert (timeline.case_id, timeline.state, timeline.version, timeline.lifecycle_version) == (
        case_id,
        "handover_pending",
        history[-1]["version"],
        LIFECYCLE.version,
    )
    assert (timeline.origin_office, timeline.destination_office, timeline.owner_office) == (
        "tallinn",
        "kyiv",
        "tallinn",
    )
    assert timeline.updated_at == clock.now()
    assert [e.event_id for e in timeline.events] == events
    assert [e.sent_at for e in timeline.events] == [clock.now() + SECOND] * 2 + [None] * (len(events) - 2)
    assert [e.case_version for e in timeline.events] == sorted(e.case_version for e in timeline.events)
    mine = [(j.event_id, j.effect, "done") for j in [job, *opened] if j.case_id == case_id]
    assert [(r.event_id, r.effect, r.status) for r in timeline.jobs] == sorted(mine, key=lambda r: r[1])
    # Booking armed the departure reminder, departing cancelled it; the handover arms its deadline.
    assert [(x.name, x.state, x.fires_trigger, x.status) for x in timeline.timers] == [
        ("departure_reminder", "travel_booked", "remind_departure", "cancelled"),
        ("handover_acknowledgement", "handover_pending", "escalate_handover", "pending"),
    ]
    # Its tasks (opened together here, so in order of kind): made late, after the events that did
    # their work (the arrival, the documents recorded), those two were made done; the pre-arrival
    # notice was completed by a travel officer.
    assert [(k.kind, k.office, k.status, k.completed_by) for k in timeline.tasks] == [
        ("airport_reception", "kyiv", "done", None),
        ("pre_arrival_notice", "tallinn", "done", TLL_TRAVEL.id),
        ("request_travel_documents", "tallinn", "done", None),
    ]


def test_the_timeline_of_an_unknown_case_is_refused(app: App) -> None:
    register(app)
    with pytest.raises(UnknownCase):
        OpsViews(app.db).timeline(str(uuid.uuid4()))
