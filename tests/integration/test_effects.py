"""Every effect of the seed story run by the service layer against a real SMTP server, the SMS
sink and a real HTTP receiver, on SQLite and PostgreSQL: once each, however often it runs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from tests.servers import Inbox, Receiver, http_receiver, smtp_server
from tests.support import FixedClock, advance_to, job_states, statements_sent
from workflow.adapters import tables as tb
from workflow.adapters.channels.sms import FileSinkSms
from workflow.adapters.channels.smtp import SmtpChannel
from workflow.adapters.channels.webhook import WebhookChannel, verify_signature
from workflow.adapters.clock import SystemClock
from workflow.adapters.jobs import SqlDeadLetters, SqlJobStore
from workflow.adapters.notices import SqlFacts
from workflow.adapters.templates import default_templates
from workflow.bootstrap import App
from workflow.demo import (
    HOUSEHOLD,
    KBP_APPROVER,
    KBP_CASEWORKER,
    STEPS,
    TLL_APPROVER,
    TLL_CASEWORKER,
    TLL_TRAVEL,
)
from workflow.domain.effects import CLOSE_TASKS, COMPLETE_TASKS, CREATE_TASK, NOTIFY_FAMILY, NOTIFY_OFFICE
from workflow.service_layer.effects import EffectRunner, Event, Job, runnable_effects
from workflow.service_layer.notifications import (
    EMAIL,
    SMS,
    WEBHOOK,
    PermanentDeliveryError,
    TransientDeliveryError,
)

SECRET = "a-handover-secret-shared-by-both-offices"
PRINCIPAL = HOUSEHOLD[0]
OFFICE_EMAIL = {"tallinn": "tallinn-office@avrr.example.org", "kyiv": "kyiv-office@avrr.example.org"}


@pytest.fixture
def inbox() -> Iterator[tuple[int, Inbox]]:
    with smtp_server() as (controller, box):
        yield controller.port, box


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with http_receiver() as running:
        yield running


@pytest.fixture
def sink(tmp_path: Path) -> Path:
    return tmp_path / "sms.jsonl"


def runner(app: App, smtp_port: int, sink: Path, max_attempts: int = 5) -> EffectRunner:
    channels = {
        EMAIL: SmtpChannel("127.0.0.1", smtp_port, "avrr@tallinn.example.org", timeout=5),
        SMS: FileSinkSms(sink),
        WEBHOOK: WebhookChannel(SECRET, timeout=5),
    }
    return EffectRunner(
        lambda: SqlJobStore(app.db, hold_connection=True),
        SystemClock(),
        max_attempts,
        facts=SqlFacts(app.db),
        channels=channels,
        renderer=default_templates(),
    )


def set_offices(app: App, webhook_for_kyiv: str | None = None) -> None:
    with app.db.begin() as conn:
        for code, address in OFFICE_EMAIL.items():
            conn.execute(update(tb.offices).where(tb.offices.c.code == code).values(email=address))
        conn.execute(
            update(tb.offices).where(tb.offices.c.code == "kyiv").values(webhook_url=webhook_for_kyiv)
        )


def jobs_of(app: App, case_id: str) -> list[Job]:
    o = tb.outbox.c
    with app.db.connect() as conn:
        events = conn.execute(
            select(o.event_id, o.event_type).where(o.case_id == case_id).order_by(o.id)
        ).all()
    return [
        Job(e.event_id, e.event_type, case_id, fx.name)
        for e in events
        for fx in runnable_effects(e.event_type)
    ]


def sms_lines(sink: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in sink.read_text().splitlines()] if sink.exists() else []


def test_the_seed_story_notifies_family_and_offices_once_in_their_languages(
    app: App, inbox: tuple[int, Inbox], sink: Path
) -> None:
    port, box = inbox
    set_offices(app)
    run = runner(app, port, sink)
    # The workers' part after each move, as it happens (a package whose job ran only after the
    # case closed would go nowhere).
    case_id = advance_to(app, "closed", after_each=lambda case: [run.run(job) for job in jobs_of(app, case)])
    jobs = jobs_of(app, case_id)

    assert {run.run(job) for job in jobs} == {"done"}
    family_notices = [j for j in jobs if j.effect.startswith(NOTIFY_FAMILY)]
    office_notices = [j for j in jobs if j.effect.startswith(NOTIFY_OFFICE)]
    mails = box.received()
    to_family = [m for m in mails if m["To"] == PRINCIPAL["email"]]
    # One e-mail and one SMS per family notice; one e-mail per office notice; the local
    # handover tells Kyiv by e-mail too.
    assert len(to_family) == len(family_notices) >= 6
    assert len(sms_lines(sink)) == len(family_notices)
    assert {line["to"] for line in sms_lines(sink)} == {PRINCIPAL["phone"]}
    to_offices = [m for m in mails if m["To"] in OFFICE_EMAIL.values()]
    assert len(to_offices) == len(office_notices) + 1
    assert any("kyiv" in m["To"] and m["Content-Language"] == "uk" for m in to_offices)
    assert any("tallinn" in m["To"] and m["Content-Language"] == "et" for m in to_offices)
    # The family registered in Ukrainian; no message carries a person's name or birth date.
    assert {m["Content-Language"] for m in to_family} == {"uk"}
    for text in [m.get_content() for m in mails] + [line["body"] for line in sms_lines(sink)]:
        for member in HOUSEHOLD:
            assert member["full_name"] not in text
            assert member["date_of_birth"] not in text

    assert {run.run(job) for job in jobs} == {"done"}  # a redelivery of every job does nothing
    assert len(box.received()) == len(mails)
    assert len(sms_lines(sink)) == len(family_notices)


def test_a_transient_failure_retries_only_the_channel_that_failed(
    app: App, inbox: tuple[int, Inbox], sink: Path
) -> None:
    port, box = inbox
    set_offices(app)
    case_id = advance_to(app, "return_approved")
    job = next(j for j in jobs_of(app, case_id) if j.effect == "notify_family:return_approved:origin")
    run = runner(app, port, sink)
    box.rcpt_reply = "451 4.3.0 mailbox busy, try later"

    with pytest.raises(TransientDeliveryError):
        run.run(job)
    assert len(sms_lines(sink)) == 1 and box.received() == []  # the SMS went out, the e-mail not

    box.rcpt_reply = None
    assert run.run(job) == "done"
    assert len(sms_lines(sink)) == 1 and len(box.received()) == 1
    with app.db.connect() as conn:
        attempts = conn.scalar(select(tb.jobs.c.attempts).where(tb.jobs.c.event_id == job.event_id))
    assert attempts == 2


def test_a_permanent_failure_is_dead_lettered_and_replay_delivers_it_once(
    app: App, inbox: tuple[int, Inbox], sink: Path
) -> None:
    port, box = inbox
    set_offices(app)
    case_id = advance_to(app, "return_approved")
    job = next(j for j in jobs_of(app, case_id) if j.effect == "notify_family:return_approved:origin")
    run = runner(app, port, sink)
    box.rcpt_reply = "550 5.1.1 no such mailbox"
    with pytest.raises(PermanentDeliveryError) as failure:
        run.run(job)
    # What the Celery task's on_failure does once retries are spent or the error is permanent:
    SqlJobStore(app.db).dead_letter(job, f"PermanentDeliveryError: {failure.value}", SystemClock().now())
    SqlJobStore(app.db).dead_letter(job, "filed twice", SystemClock().now())  # a second call files nothing

    letters = SqlDeadLetters(app.db).open()
    assert [(d.event_id, d.effect, d.attempts) for d in letters] == [(job.event_id, job.effect, 1)]
    assert "recipient refused" in letters[0].error and PRINCIPAL["email"] not in letters[0].error
    assert run.run(job) == "dead"  # a late redelivery of a dead job does nothing

    box.rcpt_reply = None  # the fault is fixed
    queued: list[Job] = []
    assert SqlDeadLetters(app.db).replay(None, SystemClock().now(), queued.append) == [job]
    assert queued == [job]
    assert run.run(job) == "done"
    assert run.run(job) == "done"
    assert len(box.received()) == 1
    assert len(sms_lines(sink)) == 1  # the SMS had gone out before the failure: not sent again
    assert SqlDeadLetters(app.db).open() == []


def approval(app: App, case_id: str) -> Event:
    """ReturnApproved: the family's notice (SMS and e-mail), then a task for the origin office."""
    job = next(j for j in jobs_of(app, case_id) if j.event_type == "ReturnApproved")
    return Event(job.event_id, job.event_type, job.case_id)


def test_an_event_runs_every_job_and_a_failing_one_holds_up_no_other(
    app: App, inbox: tuple[int, Inbox], sink: Path
) -> None:
    port, box = inbox
    set_offices(app)
    case_id = advance_to(app, "return_approved")
    event = approval(app, case_id)
    notice, task = (j.effect for j in event.jobs())
    assert notice.startswith("notify_family:") and task.startswith("create_task:")
    run = runner(app, port, sink)
    box.rcpt_reply = "451 4.3.0 mailbox busy, try later"

    first = run.run_event(event)
    assert [(job.effect, type(error)) for job, error in first.failures] == [(notice, TransientDeliveryError)]
    assert first.not_run == ()
    # The notice failed after its SMS; the task after it was still made.
    assert job_states(app, event.event_id) == {notice: ("running", 1), task: ("done", 1)}
    assert len(sms_lines(sink)) == 1 and box.received() == []

    box.rcpt_reply = None  # what the event's retry finds
    assert run.run_event(event).failures == ()
    assert run.run_event(event).failures == ()  # a redelivery of the whole event does nothing
    # The done task was skipped, not counted again; the notice took a second attempt.
    assert job_states(app, event.event_id) == {notice: ("done", 2), task: ("done", 1)}
    assert len(sms_lines(sink)) == 1 and len(box.received()) == 1
    with app.db.connect() as conn:
        kinds = conn.scalars(select(tb.tasks.c.kind).where(tb.tasks.c.source_event_id == event.event_id))
        assert list(kinds) == ["request_travel_documents"]


def test_an_error_the_caller_stops_on_leaves_the_jobs_after_it_not_run(
    app: App, inbox: tuple[int, Inbox], sink: Path
) -> None:
    port, box = inbox
    set_offices(app)
    event = approval(app, advance_to(app, "return_approved"))
    notice, task = event.jobs()
    box.rcpt_reply = "550 5.1.1 no such mailbox"

    outcome = runner(app, port, sink).run_event(event, stop_on=(PermanentDeliveryError,))
    assert [(job, type(error)) for job, error in outcome.failures] == [(notice, PermanentDeliveryError)]
    assert outcome.not_run == (task,)
    assert job_states(app, event.event_id) == {notice.effect: ("running", 1)}  # the task's job never started


def test_replay_of_a_letter_whose_job_a_late_run_finished_closes_it_and_leaves_the_job_done(
    app: App, inbox: tuple[int, Inbox], sink: Path
) -> None:
    """The job was filed in the dead letters while a late run of it was finishing (the filing
    marks it dead, the run's finish marks it done). Replaying that letter closes it; the job is
    not reopened, so its message finds it done instead of failing on the task it already made."""
    port, _ = inbox
    set_offices(app)
    event = approval(app, advance_to(app, "return_approved"))
    _, task = event.jobs()
    run = runner(app, port, sink)
    assert run.run(task) == "done"
    key = (tb.jobs.c.event_id == task.event_id) & (tb.jobs.c.effect == task.effect)
    with app.db.begin() as conn:  # as it was while that run went on
        conn.execute(update(tb.jobs).where(key).values(status="running"))
    SqlJobStore(app.db).dead_letter(task, "TimeLimitExceeded: 90", SystemClock().now())
    with app.db.begin() as conn:  # the late run's finish
        conn.execute(update(tb.jobs).where(key).values(status="done"))

    queued: list[Job] = []
    assert SqlDeadLetters(app.db).replay(None, SystemClock().now(), queued.append) == [task]
    assert queued == [task] and SqlDeadLetters(app.db).open() == []
    assert job_states(app, task.event_id)[task.effect] == ("done", 1)
    assert run.run(task) == "done"
    with app.db.connect() as conn:
        made = conn.scalars(select(tb.tasks.c.kind).where(tb.tasks.c.source_event_id == task.event_id))
        assert list(made) == ["request_travel_documents"]


def test_replay_that_cannot_publish_leaves_the_dead_letter_open(app: App) -> None:
    case_id = advance_to(app, "return_approved")
    job = jobs_of(app, case_id)[-1]
    store = SqlJobStore(app.db)
    store.start(job, SystemClock().now())
    store.dead_letter(job, "TransientDeliveryError: SMTP connection failed", SystemClock().now())

    def broker_down(_: Job) -> None:
        raise ConnectionError("broker unreachable")

    with pytest.raises(ConnectionError):
        SqlDeadLetters(app.db).replay(None, SystemClock().now(), broker_down)
    assert [d.event_id for d in SqlDeadLetters(app.db).open()] == [job.event_id]
    with app.db.connect() as conn:
        assert conn.scalar(select(tb.jobs.c.status).where(tb.jobs.c.event_id == job.event_id)) == "dead"


def test_the_handover_package_reaches_another_deployment_signed_and_without_legal_status(
    app: App, inbox: tuple[int, Inbox], sink: Path, receiver: Receiver
) -> None:
    port, _ = inbox
    set_offices(app, webhook_for_kyiv=receiver.url)
    case_id = advance_to(app, "handover_pending")
    (job,) = [j for j in jobs_of(app, case_id) if j.event_type == "HandoverSent"]
    run = runner(app, port, sink)
    receiver.replies = [(503, {"Retry-After": "1"}, 0.0)]

    with pytest.raises(TransientDeliveryError) as busy:
        run.run(job)
    assert busy.value.retry_after == 1
    assert run.run(job) == "done"
    assert run.run(job) == "done"

    assert len(receiver.requests) == 2  # the refused attempt and the delivered one, none after
    request = receiver.requests[-1]
    headers = {k.lower(): v for k, v in request.headers.items()}
    assert headers["idempotency-key"] == f"{job.event_id}/{job.effect}"
    assert (
        headers["idempotency-key"]
        == {k.lower(): v for k, v in receiver.requests[0].headers.items()}["idempotency-key"]
    )
    verify_signature(
        SECRET,
        headers["x-avrr-timestamp"],
        request.body,
        headers["x-avrr-signature"],
        SystemClock().now(),
        key=headers["idempotency-key"],
    )
    package = json.loads(request.body)
    assert package["case_id"] == case_id and package["destination_office"] == "kyiv"
    assert [p["full_name"] for p in package["household"]] == [m["full_name"] for m in HOUSEHOLD]
    text = request.body.decode()
    for private in ("asylum", "expulsion", "travel_document", "nationality", "consent"):
        assert private not in text


def test_a_job_refused_before_it_started_is_still_dead_lettered(app: App) -> None:
    case_id = advance_to(app, "inquiry")
    job = Job(
        "00000000-0000-4000-8000-00000000000a", "TravelBooked", case_id, "notify_family:lottery_won:origin"
    )

    SqlJobStore(app.db).dead_letter(
        job, "UnknownEffect: notify_family:lottery_won:origin", SystemClock().now()
    )

    (letter,) = SqlDeadLetters(app.db).open()
    assert (letter.effect, letter.attempts, letter.case_id) == (job.effect, 0, case_id)
    with app.db.connect() as conn:
        assert conn.scalar(select(tb.jobs.c.status).where(tb.jobs.c.event_id == job.event_id)) == "dead"


def test_a_late_failure_of_a_duplicate_delivery_does_not_dead_letter_a_done_job(
    app: App, inbox: tuple[int, Inbox], sink: Path
) -> None:
    port, _ = inbox
    set_offices(app)
    case_id = advance_to(app, "return_approved")
    job = next(j for j in jobs_of(app, case_id) if j.effect.startswith("create_task"))
    assert runner(app, port, sink).run(job) == "done"

    # A second delivery that ran concurrently fails afterwards (say on the task's unique key).
    SqlJobStore(app.db).dead_letter(job, "IntegrityError: duplicate task", SystemClock().now())

    assert SqlDeadLetters(app.db).open() == []
    with app.db.connect() as conn:
        assert conn.scalar(select(tb.jobs.c.status).where(tb.jobs.c.event_id == job.event_id)) == "done"


def _sent(app: App, case_id: str, effect: str) -> list[str]:
    """The channels that carried the case's jobs of ``effect`` (the deliveries recorded)."""
    d, o = tb.deliveries.c, tb.outbox.c
    with app.db.connect() as conn:
        events = select(o.event_id).where(o.case_id == case_id)
        return list(conn.scalars(select(d.channel).where(d.effect == effect, d.event_id.in_(events))))


@pytest.mark.parametrize(
    ("state", "told"),
    [("travel_documents_ready", False), ("travel_booked", True), ("no_show", True)],
)
def test_a_withdrawal_reaches_the_destination_only_of_a_case_it_was_shown(
    app: App, inbox: tuple[int, Inbox], sink: Path, state: str, told: bool
) -> None:
    """Withdrawn before the booking, the case was never shared with the destination office: it
    is not told of it. Withdrawn after (a reception prepared), it is; a no-show first tells it
    the reception is off."""
    port, box = inbox
    set_offices(app)
    case_id = advance_to(app, "travel_booked" if state == "no_show" else state)
    if state == "no_show":
        app.transitions.fire(case_id, "record_no_show", TLL_TRAVEL, {"reason": "not at the airport"})
    app.transitions.fire(case_id, "withdraw", TLL_CASEWORKER, {"reason": "the family decided to stay"})
    run = runner(app, port, sink)
    assert {run.run(job) for job in jobs_of(app, case_id)} == {"done"}
    assert _sent(app, case_id, "notify_office:case_withdrawn:destination") == (["email"] if told else [])
    assert _sent(app, case_id, "notify_office:case_withdrawn:origin") == ["email"]
    no_show = _sent(app, case_id, "notify_office:reception_off:destination")
    assert no_show == (["email"] if state == "no_show" else [])
    to_kyiv = [m for m in box.received() if m["To"] == OFFICE_EMAIL["kyiv"]]
    # The pre-arrival notice, the reception off, the withdrawal: as many as were recorded.
    assert len(to_kyiv) == (state != "travel_documents_ready") + len(no_show) + told


def test_the_origin_hears_that_the_family_arrived(app: App, inbox: tuple[int, Inbox], sink: Path) -> None:
    port, box = inbox
    set_offices(app)
    case_id = advance_to(app, "arrived")
    run = runner(app, port, sink)
    assert {run.run(job) for job in jobs_of(app, case_id)} == {"done"}
    assert _sent(app, case_id, "notify_office:arrival_confirmed:origin") == ["email"]
    to_tallinn = [m for m in box.received() if m["To"] == OFFICE_EMAIL["tallinn"]]
    assert any("IOM Kyiv" in m.get_content() for m in to_tallinn)  # where to send the handover


def _tasks(app: App, case_id: str) -> list[tuple[str, str]]:
    t = tb.tasks.c
    with app.db.connect() as conn:
        query = select(t.kind, t.status).where(t.case_id == case_id).order_by(t.kind, t.status)
        return [tuple(row) for row in conn.execute(query)]


def test_a_journey_called_off_closes_its_preparations_and_a_new_booking_keeps_its_own(
    app: App, inbox: tuple[int, Inbox], sink: Path
) -> None:
    """A no-show: the booking's reception and pre-arrival tasks are cancelled. The rebooking's new
    ones stay open, even when the no-show's jobs run after the rebooking's (a retry, a backlog)."""
    port, _ = inbox
    set_offices(app)
    case_id = advance_to(app, "travel_booked")
    run = runner(app, port, sink)
    booked = jobs_of(app, case_id)
    assert {run.run(job) for job in booked} == {"done"}  # the booking's tasks are made
    app.transitions.fire(case_id, "record_no_show", TLL_TRAVEL, {"reason": "not at the airport"})
    again = {"departure_on": "2027-01-20", "route": "TLL-WAW-KBP", "carrier": "LOT"}
    app.transitions.fire(case_id, "rebook_travel", TLL_TRAVEL, again)
    jobs = [j for j in jobs_of(app, case_id) if j not in booked]
    late = [j for j in jobs if j.event_type == "NoShowRecorded"]
    assert {run.run(job) for job in [j for j in jobs if j not in late] + late} == {"done"}
    assert _tasks(app, case_id) == [
        ("airport_reception", "cancelled"),
        ("airport_reception", "open"),
        ("pre_arrival_notice", "cancelled"),
        ("pre_arrival_notice", "open"),
        ("request_travel_documents", "done"),  # the documents were recorded: the work it asked
    ]
    assert {run.run(job) for job in late} == {"done"}  # delivered again: nothing more
    assert ("airport_reception", "open") in _tasks(app, case_id)


def test_a_bookings_tasks_whose_jobs_run_after_the_journey_was_called_off_are_made_cancelled(
    app: App, inbox: tuple[int, Inbox], sink: Path
) -> None:
    """The other order: the no-show's jobs run first (its close finds nothing yet), the booking's
    later (a retry, a message on a slower worker, a dead letter replayed). The booking's tasks are
    recorded, already cancelled; the rebooking's, which came after the no-show, are open."""
    port, _ = inbox
    set_offices(app)
    case_id = advance_to(app, "travel_booked")
    app.transitions.fire(case_id, "record_no_show", TLL_TRAVEL, {"reason": "not at the airport"})
    again = {"departure_on": "2027-01-20", "route": "TLL-WAW-KBP", "carrier": "LOT"}
    app.transitions.fire(case_id, "rebook_travel", TLL_TRAVEL, again)
    jobs = jobs_of(app, case_id)
    booked = [j for j in jobs if j.event_type == "TravelBooked"]
    run = runner(app, port, sink)
    assert {run.run(job) for job in [j for j in jobs if j not in booked] + booked} == {"done"}
    assert _tasks(app, case_id) == [
        ("airport_reception", "cancelled"),
        ("airport_reception", "open"),
        ("pre_arrival_notice", "cancelled"),
        ("pre_arrival_notice", "open"),
        ("request_travel_documents", "done"),  # the documents were recorded: the work it asked
    ]
    t = tb.tasks.c
    with app.db.connect() as conn:
        cancelled = conn.execute(
            select(t.source_event_id, t.completed_at).where(t.case_id == case_id, t.status == "cancelled")
        ).all()
    assert {source for source, _ in cancelled} == {j.event_id for j in booked}
    assert all(at is not None for _, at in cancelled)


def test_a_case_that_ends_cancels_its_open_tasks_and_leaves_done_ones_done(
    app: App, inbox: tuple[int, Inbox], sink: Path
) -> None:
    """Closed without a handover after departure: the reception Kyiv prepared and Tallinn's
    open preparations are moot; a task staff completed stays done."""
    port, _ = inbox
    set_offices(app)
    case_id = advance_to(app, "departed")
    run = runner(app, port, sink)
    before = jobs_of(app, case_id)
    assert {run.run(job) for job in before} == {"done"}
    with app.db.connect() as conn:
        documents = conn.scalar(
            select(tb.tasks.c.id).where(
                tb.tasks.c.case_id == case_id, tb.tasks.c.kind == "request_travel_documents"
            )
        )
    app.tasks.complete(documents, TLL_TRAVEL)
    app.transitions.fire(case_id, "close_without_handover", TLL_APPROVER, {"reason": "the family stayed"})
    assert {run.run(job) for job in jobs_of(app, case_id) if job not in before} == {"done"}
    assert _tasks(app, case_id) == [
        ("airport_reception", "cancelled"),
        ("pre_arrival_notice", "cancelled"),
        ("request_travel_documents", "done"),
    ]


def test_a_handover_package_run_after_the_case_was_redirected_is_delivered_to_no_one(
    app: App, inbox: tuple[int, Inbox], sink: Path
) -> None:
    """Kyiv refused, Tallinn named Riga and sent again; the first package's job runs only now (a
    retry, a replayed dead letter): it goes neither to Kyiv nor to Riga, which gets its own."""
    port, mail = inbox
    set_offices(app)
    with app.db.begin() as conn:
        conn.execute(
            update(tb.offices).where(tb.offices.c.code == "riga").values(email="riga@avrr.example.org")
        )
    case_id = advance_to(app, "handover_pending")
    app.transitions.fire(case_id, "refuse_handover", KBP_CASEWORKER, {"reason": "not our region"})
    redirect = {"destination_office": "riga", "reason": "the family settles in Latvia"}
    app.transitions.fire(case_id, "redirect_handover", TLL_CASEWORKER, redirect)
    app.transitions.fire(case_id, "send_handover", TLL_CASEWORKER)
    first, second = [j for j in jobs_of(app, case_id) if j.event_type == "HandoverSent"]
    run = runner(app, port, sink)
    assert run.run(second) == "done"
    assert run.run(first) == "done"
    assert [m["To"] for m in mail.received()] == ["riga@avrr.example.org"]


def test_tasks_are_done_by_the_events_that_do_their_work_and_a_visit_asks_for_the_next(
    app: App, clock: FixedClock, inbox: tuple[int, Inbox], sink: Path
) -> None:
    """Recording the documents does the documents task, the arrival the reception, the plan's
    submission the counselling, a monitoring visit the visit the last one (or the last tranche)
    asked for, and it asks for the next. Each settled as it happened, as the workers would."""
    port, _ = inbox
    set_offices(app)
    run = runner(app, port, sink)
    kinds = (CREATE_TASK, CLOSE_TASKS, COMPLETE_TASKS)

    def workers(case_id: str) -> None:
        for job in jobs_of(app, case_id):
            if job.effect.split(":")[0] in kinds:
                assert run.run(job) == "done", job

    case_id = advance_to(app, "monitoring", after_each=workers)
    assert _tasks(app, case_id) == [
        ("airport_reception", "done"),
        ("monitoring_visit", "open"),  # the last tranche asked for the first visit
        ("pre_arrival_notice", "open"),  # staff's to complete (no event does it)
        ("reintegration_counselling", "done"),
        ("request_travel_documents", "done"),
    ]
    clock.advance(days=30)
    visit = {"visited_on": "2026-12-28", "kind": "home_visit", "plan_on_track": True}
    app.transitions.fire(case_id, "record_monitoring_visit", KBP_CASEWORKER, visit)
    workers(case_id)
    t = tb.tasks.c
    with app.db.connect() as conn:
        visits = conn.execute(
            select(t.status, t.completed_by, t.due_on).where(
                t.case_id == case_id, t.kind == "monitoring_visit"
            )
        ).all()
    assert sorted((status, by) for status, by, _ in visits) == [("done", None), ("open", None)]
    # The next visit is due 90 days after this one, 30 days after the first was asked for.
    assert sorted(due for _, _, due in visits)[1] - sorted(due for _, _, due in visits)[0] == timedelta(
        days=30
    )


def test_a_visits_task_run_late_is_made_done_and_does_not_replace_the_next_one(
    app: App, clock: FixedClock, inbox: tuple[int, Inbox], sink: Path
) -> None:
    """Two visits recorded; the second's job runs first (its task is the open one, and the
    tranche's task it replaces is done). The first's job runs late: its task is made done (a
    later visit settled it) and it leaves the second's open."""
    port, _ = inbox
    set_offices(app)
    case_id = advance_to(app, "monitoring")
    run = runner(app, port, sink)
    for job in jobs_of(app, case_id):
        if job.effect.startswith("create_task:monitoring_visit"):
            assert run.run(job) == "done"  # the last tranche's: the first visit asked for
    visit = {"visited_on": "2026-12-28", "kind": "home_visit", "plan_on_track": True}
    first = app.transitions.fire(case_id, "record_monitoring_visit", KBP_CASEWORKER, visit).event_ids[0]
    second = app.transitions.fire(case_id, "record_monitoring_visit", KBP_CASEWORKER, visit).event_ids[0]
    by_event = {j.event_id: j for j in jobs_of(app, case_id) if j.effect.startswith("create_task")}
    assert run.run(by_event[second]) == "done"
    assert run.run(by_event[first]) == "done"
    t = tb.tasks.c
    with app.db.connect() as conn:
        rows = dict(
            conn.execute(
                select(t.source_event_id, t.status).where(t.case_id == case_id, t.kind == "monitoring_visit")
            ).all()
        )
    assert rows.pop(second) == "open" and rows.pop(first) == "done"
    assert list(rows.values()) == ["done"]  # the tranche's


def _task_jobs(app: App, case_id: str, event_id: str) -> list[Job]:
    kinds = (CREATE_TASK, CLOSE_TASKS, COMPLETE_TASKS)
    return [j for j in jobs_of(app, case_id) if j.event_id == event_id and j.effect.split(":")[0] in kinds]


def test_settling_jobs_run_out_of_order_leave_each_task_as_the_commit_order_does(
    app: App, inbox: tuple[int, Inbox], sink: Path
) -> None:
    """A visit recorded, then the case closed; the close's jobs run first. The tranche's visit
    task was done by the visit (not cancelled by the close, which came after), and the visit's
    own task, made late, is cancelled by the close."""
    port, _ = inbox
    set_offices(app)
    run = runner(app, port, sink)
    case_id = advance_to(app, "monitoring")
    for job in jobs_of(app, case_id):
        if job.effect.startswith("create_task:monitoring_visit"):
            assert run.run(job) == "done"
    visit = {"visited_on": "2026-12-28", "kind": "home_visit", "plan_on_track": True}
    visited = app.transitions.fire(case_id, "record_monitoring_visit", KBP_CASEWORKER, visit).event_ids[0]
    closing = {"outcome": "reintegrated", "reason": "business running"}
    closed = app.transitions.fire(case_id, "close", KBP_APPROVER, closing).event_ids[0]
    for job in _task_jobs(app, case_id, closed) + _task_jobs(app, case_id, visited):
        assert run.run(job) == "done", job
    t = tb.tasks.c
    with app.db.connect() as conn:
        rows = dict(
            conn.execute(
                select(t.source_event_id, t.status).where(t.case_id == case_id, t.kind == "monitoring_visit")
            ).all()
        )
    assert rows.pop(visited) == "cancelled"
    assert list(rows.values()) == ["done"]  # the tranche's: the visit did it


def test_an_arrival_does_the_reception_of_the_office_it_was_prepared_by_after_a_redirect(
    app: App, inbox: tuple[int, Inbox], sink: Path
) -> None:
    """Kyiv prepared the reception; the case was redirected to Riga before the arrival's jobs ran:
    Kyiv's task is done all the same, not left open where Kyiv no longer sees it."""
    port, _ = inbox
    set_offices(app)
    run = runner(app, port, sink)
    case_id = advance_to(app, "departed")
    for job in jobs_of(app, case_id):
        if job.effect.startswith("create_task"):
            assert run.run(job) == "done"
    arrival = next(step.payload for step in STEPS if step.trigger == "confirm_arrival")
    arrived = app.transitions.fire(case_id, "confirm_arrival", KBP_CASEWORKER, arrival).event_ids[0]
    redirect = {"destination_office": "riga", "reason": "the family settles in Latvia"}
    app.transitions.fire(case_id, "redirect_handover", TLL_CASEWORKER, redirect)
    for job in _task_jobs(app, case_id, arrived):
        assert run.run(job) == "done"
    t = tb.tasks.c
    with app.db.connect() as conn:
        reception = conn.execute(
            select(t.office, t.status).where(t.case_id == case_id, t.kind == "airport_reception")
        ).all()
    assert [tuple(r) for r in reception] == [("kyiv", "done")]


def test_a_handover_package_run_after_the_case_was_closed_unhanded_goes_nowhere(
    app: App, inbox: tuple[int, Inbox], sink: Path
) -> None:
    """Closed as not handed over before the package's job ran (a retry, a replayed dead letter):
    the destination is not handed a case that ended."""
    port, mail = inbox
    set_offices(app)
    case_id = advance_to(app, "handover_pending")
    app.transitions.fire(case_id, "close_without_handover", TLL_APPROVER, {"reason": "the family moved on"})
    (package,) = [j for j in jobs_of(app, case_id) if j.event_type == "HandoverSent"]
    assert runner(app, port, sink).run(package) == "done"
    assert mail.received() == []


def _events_by_type(app: App, case_id: str) -> dict[str, Event]:
    o = tb.outbox.c
    with app.db.connect() as conn:
        rows = conn.execute(select(o.event_id, o.event_type, o.occurred_at).where(o.case_id == case_id))
        return {r.event_type: Event(r.event_id, r.event_type, case_id, r.occurred_at) for r in rows}


@pytest.mark.parametrize("task_first", [True, False], ids=["task-first", "settled-first"])
def test_documents_obtained_on_a_first_delivery_do_the_documents_task_once_whichever_runs_first(
    app: App, inbox: tuple[int, Inbox], sink: Path, task_first: bool
) -> None:
    """Both events' messages on their first delivery (workers/tasks.py, first_delivery): the
    approval's task and the documents' settling are each written with their job's row, done,
    in one statement on PostgreSQL (create_task_first, settle_first); the task ends done
    whichever runs first (made late, it is made done), and copies of both change nothing."""
    port, _ = inbox
    set_offices(app)
    case_id = advance_to(app, "travel_documents_ready")
    events = _events_by_type(app, case_id)
    approved, obtained = events["ReturnApproved"], events["TravelDocumentsObtained"]
    task = "create_task:request_travel_documents:origin"
    settle = "complete_tasks:request_travel_documents:origin"
    run = runner(app, port, sink)
    sent: list[str] = []  # the statements of the documents' event (its settling job alone)

    def settle_counted() -> None:
        with statements_sent(app.db) as statements:
            assert run.run_event(obtained, first_delivery=True).failures == ()
        sent.extend(statements)

    if not task_first:
        settle_counted()
    assert run.run_event(approved, first_delivery=True).failures == ()
    if task_first:
        settle_counted()

    assert _tasks(app, case_id) == [("request_travel_documents", "done")]
    j = tb.jobs.c
    with app.db.connect() as conn:
        rows = conn.execute(
            select(j.effect, j.status, j.attempts, j.started_at == j.finished_at).where(
                j.effect.in_([task, settle])
            )
        ).all()
    found = {effect: tuple(rest) for effect, *rest in rows}
    if app.db.dialect.name == "postgresql":  # never written running: one statement each
        assert found == {task: ("done", 1, True), settle: ("done", 1, True)}
        assert len(sent) == 1 and "UPDATE tasks" in sent[0] and "INSERT INTO jobs" in sent[0]
    else:  # the ordinary path: start, then the work
        assert {effect: row[:2] for effect, row in found.items()} == {task: ("done", 1), settle: ("done", 1)}

    for event in (approved, obtained):  # copies, on their first delivery too
        assert run.run_event(event, first_delivery=True).failures == ()
    assert _tasks(app, case_id) == [("request_travel_documents", "done")]
    with app.db.connect() as conn:
        assert set(conn.scalars(select(j.attempts).where(j.effect.in_([task, settle])))) == {1}
