"""A task or settling job on its message's first delivery (``SqlJobStore.create_task_first``,
``settle_first``): on PostgreSQL its row is written done with its work in one statement, and
nothing is written when the row is there already (or, for a task, the case is not); SQLite takes
the ordinary path. The outcome is the one the ordinary path (start, then the work) leaves."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import select, update

from tests.support import FixedClock, advance_to, statements_sent
from workflow.adapters import tables as tb
from workflow.adapters.jobs import SqlJobStore
from workflow.bootstrap import App
from workflow.demo import KBP_CASEWORKER
from workflow.domain.effects import effect_named
from workflow.service_layer.effects import EffectRunner, Event, Job, runnable_effects

VISIT = {"visited_on": "2026-12-28", "kind": "home_visit", "plan_on_track": True}
VISIT_TASK = "create_task:monitoring_visit:destination"


def _runner(app: App, clock: FixedClock) -> EffectRunner:
    return EffectRunner(lambda: SqlJobStore(app.db), clock, max_attempts=5)


def _in_monitoring(app: App, clock: FixedClock) -> str:
    """A case in monitoring whose last tranche's visit task is made (its jobs run as ever)."""
    case_id = advance_to(app, "monitoring")
    o = tb.outbox.c
    with app.db.connect() as conn:
        events = conn.execute(select(o.event_id, o.event_type).where(o.case_id == case_id)).all()
    run = _runner(app, clock)
    for event_id, event_type in events:
        if any(e.name == VISIT_TASK for e in runnable_effects(event_type)):
            assert run.run(Job(event_id, event_type, case_id, VISIT_TASK)) == "done"
    return case_id


def _visit(app: App, case_id: str) -> Event:
    """A visit recorded, as its message carries it (with its commit time, so the task's due date
    needs no read)."""
    (event_id,) = app.transitions.fire(case_id, "record_monitoring_visit", KBP_CASEWORKER, VISIT).event_ids
    with app.db.connect() as conn:
        occurred = conn.scalar(select(tb.outbox.c.occurred_at).where(tb.outbox.c.event_id == event_id))
    return Event(event_id, "MonitoringVisitRecorded", case_id, occurred)


def _job_row(app: App, event_id: str) -> tuple[Any, ...] | None:
    j = tb.jobs.c
    with app.db.connect() as conn:
        row = conn.execute(
            select(j.status, j.attempts, j.started_at == j.finished_at).where(
                j.event_id == event_id, j.effect == VISIT_TASK
            )
        ).first()
    return None if row is None else tuple(row)


def _visits(app: App, case_id: str) -> dict[str, str]:
    t = tb.tasks.c
    with app.db.connect() as conn:
        rows = conn.execute(
            select(t.source_event_id, t.status).where(t.case_id == case_id, t.kind == "monitoring_visit")
        ).all()
    return {source: status for source, status in rows}


def test_a_visit_on_its_first_delivery_is_done_with_its_task_in_one_statement(
    app: App, clock: FixedClock
) -> None:
    case_id = _in_monitoring(app, clock)
    (tranche,) = _visits(app, case_id)
    visit = _visit(app, case_id)
    run = _runner(app, clock)

    with statements_sent(app.db) as sent:
        outcome = run.run_event(visit, first_delivery=True)

    assert outcome.failures == ()
    assert _visits(app, case_id) == {tranche: "done", visit.event_id: "open"}  # the next asked for
    if app.db.dialect.name == "postgresql":
        # One statement: the job's row, written done (never running), with the task.
        assert len(sent) == 1 and "INSERT INTO tasks" in sent[0] and "INSERT INTO jobs" in sent[0]
        assert _job_row(app, visit.event_id) == ("done", 1, True)
    else:  # the ordinary path: start, then the task with the job's done
        assert len(sent) > 1
        assert _job_row(app, visit.event_id)[:2] == ("done", 1)  # type: ignore[index]

    # A copy of the message, on its first delivery too, finds the job done and does nothing.
    assert run.run_event(visit, first_delivery=True).failures == ()
    assert _visits(app, case_id) == {tranche: "done", visit.event_id: "open"}
    assert _job_row(app, visit.event_id)[:2] == ("done", 1)  # type: ignore[index]


@pytest.mark.postgres
def test_a_first_delivery_of_a_started_job_writes_nothing_and_the_job_runs_as_ever(
    pg_app: App, clock: FixedClock
) -> None:
    """Another copy started it (and died, say): the step writes nothing, and the run counts the
    attempt as any delivery would."""
    case_id = _in_monitoring(pg_app, clock)
    visit = _visit(pg_app, case_id)
    job = Job(visit.event_id, visit.event_type, case_id, VISIT_TASK)
    effect = effect_named(visit.event_type, VISIT_TASK)
    assert effect is not None
    store = SqlJobStore(pg_app.db)
    store.start(job, clock.now())

    assert store.create_task_first(job, effect, clock.now()) is False
    assert visit.event_id not in _visits(pg_app, case_id)
    assert _job_row(pg_app, visit.event_id) == ("running", 1, None)  # not finished

    assert _runner(pg_app, clock).run_event(visit, first_delivery=True).failures == ()
    assert _visits(pg_app, case_id)[visit.event_id] == "open"
    assert _job_row(pg_app, visit.event_id)[:2] == ("done", 2)  # type: ignore[index]


@pytest.mark.postgres
def test_a_first_delivery_for_a_case_that_is_not_there_writes_no_job_and_no_task(
    pg_app: App, clock: FixedClock
) -> None:
    missing = Job(str(uuid.uuid4()), "MonitoringVisitRecorded", str(uuid.uuid4()), VISIT_TASK)
    effect = effect_named(missing.event_type, VISIT_TASK)
    assert effect is not None

    assert SqlJobStore(pg_app.db).create_task_first(missing, effect, clock.now()) is False
    assert _job_row(pg_app, missing.event_id) is None
    with pg_app.db.connect() as conn:
        assert conn.scalar(select(tb.tasks.c.id).where(tb.tasks.c.case_id == missing.case_id)) is None
    # The ordinary path then finds no case, as it always has.
    event = Event(missing.event_id, missing.event_type, missing.case_id)
    outcome = _runner(pg_app, clock).run_event(event, first_delivery=True)
    ((_, error),) = outcome.failures
    assert isinstance(error, LookupError)


def test_a_visit_run_late_on_its_first_delivery_is_made_done_and_leaves_the_next_open(
    app: App, clock: FixedClock
) -> None:
    """As tests/integration/test_effects.py's late visit, each job on a first delivery: the
    second visit's job runs first; the first's, run late, makes its task done (the later visit
    settled it) and leaves the second's open."""
    case_id = _in_monitoring(app, clock)
    (tranche,) = _visits(app, case_id)
    first, second = _visit(app, case_id), _visit(app, case_id)
    run = _runner(app, clock)

    assert run.run_event(second, first_delivery=True).failures == ()
    assert run.run_event(first, first_delivery=True).failures == ()

    assert _visits(app, case_id) == {tranche: "done", first.event_id: "done", second.event_id: "open"}
    for visit in (first, second):
        assert _job_row(app, visit.event_id)[:2] == ("done", 1)  # type: ignore[index]


DOCUMENTS_DONE = "complete_tasks:request_travel_documents:origin"


@pytest.mark.postgres
@pytest.mark.parametrize("found", ["running", "pending"])
def test_a_first_delivery_of_a_settling_job_whose_row_is_there_writes_nothing(
    pg_app: App, clock: FixedClock, found: str
) -> None:
    """The documents' settling job started by another copy (running) or reopened by a replay
    (pending): the one-step settling writes nothing and settles nothing, and the run then
    settles the task the ordinary way, counting its attempt."""
    case_id = advance_to(pg_app, "travel_documents_ready")
    o, t, j = tb.outbox.c, tb.tasks.c, tb.jobs.c
    with pg_app.db.connect() as conn:
        events = dict(conn.execute(select(o.event_type, o.event_id).where(o.case_id == case_id)).all())
    approved, obtained = events["ReturnApproved"], events["TravelDocumentsObtained"]
    run = _runner(pg_app, clock)
    task_job = Job(approved, "ReturnApproved", case_id, "create_task:request_travel_documents:origin")
    assert run.run(task_job) == "done"
    with pg_app.db.begin() as conn:  # made late, it was made done; as if made before the documents
        opened = update(tb.tasks).where(t.case_id == case_id).values(status="open", completed_at=None)
        assert conn.execute(opened).rowcount == 1
    settling = Job(obtained, "TravelDocumentsObtained", case_id, DOCUMENTS_DONE)
    store = SqlJobStore(pg_app.db)
    store.start(settling, clock.now())
    if found == "pending":  # as a replay leaves it
        with pg_app.db.begin() as conn:
            conn.execute(update(tb.jobs).where(j.event_id == obtained).values(status="pending", attempts=0))
    effect = effect_named(settling.event_type, DOCUMENTS_DONE)
    assert effect is not None

    def documents_task() -> str | None:
        with pg_app.db.connect() as conn:
            documents = select(t.status).where(t.case_id == case_id, t.kind == "request_travel_documents")
            return conn.scalar(documents)

    def settling_row() -> tuple[Any, ...]:
        with pg_app.db.connect() as conn:
            return tuple(conn.execute(select(j.status, j.attempts).where(j.event_id == obtained)).one())

    before = settling_row()
    assert store.settle_first(settling, effect, clock.now()) is None
    assert documents_task() == "open" and settling_row() == before

    event = Event(obtained, settling.event_type, case_id)
    assert run.run_event(event, first_delivery=True).failures == ()
    assert documents_task() == "done"
    assert settling_row() == ("done", before[1] + 1)
