"""The effect runner's rules with in-memory stores and channels (pure logic, no servers)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import pytest

from config.celery import MAX_ATTEMPTS
from workers.tasks import backoff
from workflow.adapters.templates import default_templates
from workflow.domain.effects import EFFECTS, OPENED_TASKS, TASKS_ONLY, Effect
from workflow.domain.lifecycle import DESTINATION, LIFECYCLE, ORIGIN
from workflow.service_layer.effects import EffectRunner, Event, Facts, Job, UnknownEffect, runnable_effects
from workflow.service_layer.notifications import (
    EMAIL,
    SMS,
    WEBHOOK,
    Message,
    PermanentDeliveryError,
    TransientDeliveryError,
)

NOW = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)


class Clock:
    def now(self) -> datetime:
        return NOW


@dataclass
class Store:
    status: str = "new"
    attempts: int = 0
    deliveries: set[str] = field(default_factory=set)
    tasks: list[str] = field(default_factory=list)
    dead: list[str] = field(default_factory=list)
    closed: int = 0
    closed_kinds: list[str] = field(default_factory=list)
    started: list[str] = field(default_factory=list)  # the effects whose attempt start() counted
    first: list[str] = field(default_factory=list)  # the tasks create_task_first wrote

    def start(self, job: Job, now: datetime) -> tuple[str, int]:
        self.started.append(job.effect)
        if self.status in ("done", "dead"):
            return self.status, self.attempts
        self.status, self.attempts = "running", self.attempts + 1
        return self.status, self.attempts

    def create_task_once(self, job: Job, effect: Effect, now: datetime) -> None:
        self.tasks.append(effect.subject)
        self.status = "done"

    def create_task_first(self, job: Job, effect: Effect, now: datetime) -> bool:
        if self.status != "new":  # the job's row is there
            return False
        self.tasks.append(effect.subject)
        self.first.append(effect.subject)
        self.status, self.attempts = "done", 1
        return True

    def settle_first(self, job: Job, effect: Effect, now: datetime) -> int | None:
        if self.status != "new":  # the job's row is there
            return None
        self.closed_kinds.append(effect.subject)
        self.first.append(effect.subject)
        self.status, self.attempts = "done", 1
        return 1

    def close_tasks(self, job: Job, effect: Effect, now: datetime) -> int:
        self.closed_kinds.append(effect.subject)
        self.status = "done"
        return 1

    def delivered(self, job: Job) -> frozenset[str]:
        return frozenset(self.deliveries)

    def record_delivery(self, job: Job, channel: str, now: datetime) -> None:
        self.deliveries.add(channel)

    def finish(
        self, job: Job, status: str, error: str | None, now: datetime, delivered: str | None = None
    ) -> None:
        if delivered is not None:
            self.deliveries.add(delivered)
        self.status = status

    def dead_letter(self, job: Job, error: str, now: datetime, attempts: int | None = None) -> None:
        self.status = "dead"
        self.dead.append(error)
        if attempts is not None:
            self.attempts = attempts

    def close(self) -> None:
        self.closed += 1


@dataclass
class Channel:
    fail_with: Exception | None = None
    sent: list[Message] = field(default_factory=list)

    def send(self, message: Message) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.sent.append(message)


@dataclass
class FactSource:
    contacts: Mapping[str, str] = field(
        default_factory=lambda: {SMS: "+3725550101", EMAIL: "family@example.org"}
    )
    office_email: str | None = "office@example.org"
    webhook: str | None = None
    redirected: bool = False  # a later event named another destination office

    def facts(self, job: Job) -> dict[str, Facts]:
        values = {"case_ref": "C-1", "departure_on": "2026-12-01", "route": "TLL-KBP", "due_on": "2026-12-03"}
        origin = Facts("uk", self.contacts, "et", self.office_email, self.webhook, values)
        # The destination office is another office: its own address, language and endpoint.
        destination = Facts(
            "uk",
            self.contacts,
            "uk",
            self.office_email and f"destination-{self.office_email}",
            self.webhook,
            values,
        )
        return {ORIGIN: origin, DESTINATION: destination}

    def handover_package(self, job: Job) -> dict[str, Any]:
        return {"case_id": job.case_id}

    def superseded_since(self, job: Job) -> bool:
        return self.redirected


def runner(store: Store, channels: dict[str, Channel], facts: FactSource | None = None) -> EffectRunner:
    return EffectRunner(
        lambda: store, Clock(), 3, facts or FactSource(), channels, renderer=default_templates()
    )


def job(event_type: str, effect: str) -> Job:
    return Job("event-1", event_type, "case-1", effect)


def test_every_effect_in_the_table_is_runnable_and_every_notice_has_a_template() -> None:
    templates = default_templates()
    for event_type, effects in EFFECTS.items():
        assert runnable_effects(event_type) == effects
        for effect in effects:
            if effect.kind.startswith("notify_"):
                audience = "family" if effect.kind == "notify_family" else "office"
                assert templates.keys(f"{audience}.{effect.subject}")


def test_a_family_notice_goes_by_sms_and_email_in_the_family_language() -> None:
    store, sms, email = Store(), Channel(), Channel()
    assert (
        runner(store, {SMS: sms, EMAIL: email}).run(job("TravelBooked", "notify_family:travel_booked:origin"))
        == "done"
    )
    (text,), (mail,) = sms.sent, email.sent
    assert (text.recipient, text.language, mail.recipient) == ("+3725550101", "uk", "family@example.org")
    assert text.idempotency_key == mail.idempotency_key == "event-1/notify_family:travel_booked:origin"
    assert "2026-12-01" in text.body and store.deliveries == {SMS, EMAIL}


def test_a_channel_that_already_delivered_is_skipped_on_the_next_attempt() -> None:
    store, sms, email = Store(), Channel(), Channel(fail_with=TransientDeliveryError("busy"))
    run = runner(store, {SMS: sms, EMAIL: email})
    the_job = job("ReturnApproved", "notify_family:return_approved:origin")
    with pytest.raises(TransientDeliveryError):
        run.run(the_job)
    email.fail_with = None
    assert run.run(the_job) == "done"
    assert (len(sms.sent), len(email.sent), store.attempts) == (1, 1, 2)
    assert store.closed == 2  # each run gave back what the store held, the failed one too


def test_an_sms_the_gateway_refuses_does_not_keep_the_email_from_the_family() -> None:
    """The gateway refuses the phone number for good: the e-mail still goes and is recorded, and
    the job fails with the SMS's permanent error (filed; a replay tries the SMS only)."""
    refused = PermanentDeliveryError("HTTP POST answered 400")
    store, sms, email = Store(), Channel(fail_with=refused), Channel()
    the_job = job("ReturnApproved", "notify_family:return_approved:origin")
    with pytest.raises(PermanentDeliveryError) as raised:
        runner(store, {SMS: sms, EMAIL: email}).run(the_job)
    assert raised.value is refused
    assert (len(email.sent), store.deliveries) == (1, {EMAIL})


def test_a_transient_failure_on_one_channel_retries_that_channel_even_when_another_refused() -> None:
    store = Store()
    sms = Channel(fail_with=PermanentDeliveryError("HTTP POST answered 400"))
    email = Channel(fail_with=TransientDeliveryError("SMTP connect failed", retry_after=7))
    run = runner(store, {SMS: sms, EMAIL: email})
    the_job = job("ReturnApproved", "notify_family:return_approved:origin")
    with pytest.raises(TransientDeliveryError) as raised:
        run.run(the_job)
    assert raised.value.retry_after == 7 and store.deliveries == set()
    email.fail_with = None
    with pytest.raises(PermanentDeliveryError):  # the e-mail now goes; the SMS stays refused
        run.run(the_job)
    assert (len(email.sent), store.deliveries) == (1, {EMAIL})


class EveryJobNew(Store):  # the jobs of one event, each starting afresh
    def start(self, job: Job, now: datetime) -> tuple[str, int]:
        self.started.append(job.effect)
        return "running", 1

    def create_task_first(self, job: Job, effect: Effect, now: datetime) -> bool:
        self.status = "new"  # this job's row is not there, whatever the others' did
        return super().create_task_first(job, effect, now)

    def settle_first(self, job: Job, effect: Effect, now: datetime) -> int | None:
        self.status = "new"
        return super().settle_first(job, effect, now)

    def delivered(self, job: Job) -> frozenset[str]:
        return frozenset()


@dataclass
class HandedOver(FactSource):
    """Facts as one of two deployments reads them: Kyiv (the destination) is served by the other
    deployment (a webhook URL); ``owner_here``: this one owns the case; ``relayed``: the event
    was fired on the other deployment's delivery."""

    owner_here: bool = True
    relayed: bool = False

    def facts(self, job: Job) -> dict[str, Facts]:
        read = super().facts(job)
        here = {"owner_served": self.owner_here, "from_elsewhere": self.relayed}
        kyiv = "https://kyiv.example.org/handover/inbound"
        return {
            ORIGIN: replace(read[ORIGIN], office_webhook=None, **here),
            DESTINATION: replace(read[DESTINATION], office_webhook=kyiv, **here),
        }


def test_a_decision_relayed_from_the_other_deployment_notifies_and_tasks_each_office_once() -> None:
    """Tallinn's copy fires HandoverAccepted when Kyiv's decision arrives: Kyiv's deployment
    already told the family (it owns the case now) and made Kyiv's task; Tallinn tells its own
    office only."""
    store, sms, email = EveryJobNew(), Channel(), Channel()
    run = runner(store, {SMS: sms, EMAIL: email}, HandedOver(owner_here=False, relayed=True))
    outcome = run.run_event(Event("event-1", "HandoverAccepted", "case-1"))
    assert outcome.failures == () and store.tasks == []
    assert sms.sent == [] and [m.recipient for m in email.sent] == ["office@example.org"]


def test_a_decision_made_here_leaves_the_origins_notice_to_the_origins_deployment() -> None:
    """Seen from Kyiv's deployment (Tallinn, the origin, is the one served elsewhere)."""

    @dataclass
    class AtKyiv(FactSource):
        def facts(self, job: Job) -> dict[str, Facts]:
            read = super().facts(job)
            tallinn = "https://tallinn.example.org/handover/inbound"
            return {ORIGIN: replace(read[ORIGIN], office_webhook=tallinn), DESTINATION: read[DESTINATION]}

        def handover_decision(self, job: Job) -> dict[str, Any]:
            return {"case_id": job.case_id, "decision": "accepted"}

    store, sms, email, webhook = EveryJobNew(), Channel(), Channel(), Channel()
    outcome = runner(store, {SMS: sms, EMAIL: email, WEBHOOK: webhook}, AtKyiv()).run_event(
        Event("event-1", "HandoverAccepted", "case-1")
    )
    assert outcome.failures == () and store.tasks == ["reintegration_counselling"]
    assert len(sms.sent) == 1 and [m.recipient for m in email.sent] == ["family@example.org"]
    assert [m.recipient for m in webhook.sent] == ["https://tallinn.example.org/handover/inbound"]


def test_events_made_here_tell_the_family_and_other_offices_whoever_serves_them() -> None:
    sms, email = Channel(), Channel()
    channels: dict[str, Channel] = {SMS: sms, EMAIL: email}
    family = job("HandoverAccepted", "notify_family:handover_accepted:origin")
    assert runner(Store(), channels, HandedOver(owner_here=False)).run(family) == "done"
    # Not an event the other deployment fires: the destination office hears it from here.
    notice = job("TravelBooked", "notify_office:pre_arrival_notice:destination")
    assert runner(Store(), channels, HandedOver(owner_here=True)).run(notice) == "done"
    assert (len(sms.sent), [m.recipient for m in email.sent]) == (
        1,
        ["family@example.org", "destination-office@example.org"],
    )


def test_a_booking_asks_no_task_of_a_destination_served_by_another_deployment() -> None:
    """Tallinn books the journey; Kyiv works in its own deployment, which has no copy of the case
    before the handover: Kyiv hears by e-mail, and no airport-reception task waits in Tallinn's
    database where none of Kyiv's staff would see it. Tallinn's own task is made."""
    store, sms, email = EveryJobNew(), Channel(), Channel()
    outcome = runner(store, {SMS: sms, EMAIL: email}, HandedOver()).run_event(
        Event("event-1", "TravelBooked", "case-1")
    )
    assert outcome.failures == () and store.tasks == ["pre_arrival_notice"]
    assert [m.recipient for m in email.sent] == ["family@example.org", "destination-office@example.org"]


def test_the_tasks_a_case_that_ends_cancels_are_every_task_the_table_opens() -> None:
    opened = {(e.subject, e.side) for effects in EFFECTS.values() for e in effects if e.kind == "create_task"}
    assert set(OPENED_TASKS) == opened
    for event_type in ("CaseClosed", "CaseLapsed"):
        closed = {(e.subject, e.side) for e in EFFECTS[event_type] if e.kind == "close_tasks"}
        assert closed == opened, event_type


def test_events_with_tasks_only_are_the_destinations_own_after_the_handover() -> None:
    """Their tasks are made without asking where the office is served (no read of their own),
    which is right only if the deployment that fires them serves the task's office: the
    destination's staff fire them, in the deployment that owns the handed-over case."""
    assert {"DisbursementCompleted", "MonitoringVisitRecorded"} == TASKS_ONLY
    for event_type in TASKS_ONLY:
        assert {e.side for e in EFFECTS[event_type]} == {DESTINATION}
        firing = [t for t in LIFECYCLE.transitions if event_type in t.events]
        assert firing and all(t.sides == (DESTINATION,) for t in firing), event_type


def test_an_event_reads_its_facts_once_for_all_its_notices_and_closes_its_store() -> None:
    class Counting(FactSource):
        reads: int = 0

        def facts(self, job: Job) -> dict[str, Facts]:
            self.reads += 1
            return super().facts(job)

    store, facts, sms, email = EveryJobNew(), Counting(), Channel(), Channel()
    # TravelRebooked: the family's notice (SMS and e-mail), the destination office's, two tasks.
    event = Event("event-1", "TravelRebooked", "case-1")
    outcome = runner(store, {SMS: sms, EMAIL: email}, facts).run_event(event)
    assert outcome.failures == () and outcome.not_run == ()
    assert [m.recipient for m in email.sent] == ["family@example.org", "destination-office@example.org"]
    assert email.sent[1].language == "uk"  # the destination office's language, not the origin's
    assert len(sms.sent) == 1 and len(store.tasks) == 2
    assert facts.reads == 1  # once for the event (both sides), not once per notice
    assert store.closed == 1


def test_a_job_past_its_attempt_cap_is_dead_lettered_without_running() -> None:
    store, email = Store(attempts=3), Channel()
    assert (
        runner(store, {EMAIL: email}).run(
            job("ApplicationSubmitted", "notify_office:application_submitted:origin")
        )
        == "dead"
    )
    assert email.sent == [] and store.dead == ["gave up after 3 attempts"]
    assert store.attempts == 3  # what was made: the refused fourth start is not counted


def test_a_finished_job_does_nothing_when_delivered_again() -> None:
    store, email = Store(status="done", attempts=1), Channel()
    assert (
        runner(store, {EMAIL: email}).run(
            job("ApplicationSubmitted", "notify_office:application_submitted:origin")
        )
        == "done"
    )
    assert email.sent == [] and store.attempts == 1


def test_no_recipient_finishes_the_job_without_sending() -> None:
    store, email = Store(), Channel()
    facts = FactSource(office_email=None)
    assert (
        runner(store, {EMAIL: email}, facts).run(
            job("ApplicationSubmitted", "notify_office:application_submitted:origin")
        )
        == "done"
    )
    assert email.sent == [] and store.status == "done"


def test_a_handover_to_another_deployment_without_a_webhook_channel_is_permanent() -> None:
    store = Store()
    the_job = job("HandoverSent", "deliver_handover:handover_package:destination")
    with pytest.raises(PermanentDeliveryError):
        runner(store, {EMAIL: Channel()}, FactSource(webhook="https://kyiv.example.org/handover")).run(
            the_job
        )
    webhook = Channel()
    assert (
        runner(Store(), {WEBHOOK: webhook}, FactSource(webhook="https://kyiv.example.org/h")).run(the_job)
        == "done"
    )
    assert webhook.sent[0].body == '{"case_id": "case-1"}'


def test_a_handover_within_the_deployment_tells_the_destination_office_by_email() -> None:
    store, email = Store(), Channel()
    the_job = job("HandoverSent", "deliver_handover:handover_package:destination")
    assert runner(store, {EMAIL: email}).run(the_job) == "done"
    assert [m.recipient for m in email.sent] == ["destination-office@example.org"] and store.deliveries == {
        "local",
        EMAIL,
    }


@pytest.mark.parametrize("webhook", [None, "https://riga.example.org/handover"])
def test_a_handover_retried_after_the_case_was_redirected_goes_nowhere(webhook: str | None) -> None:
    """The package was for the office first named; the case now goes to another, which reads the
    case as it is now: a retry or replay of the old package sends nothing to either."""
    store, email, channel = Store(), Channel(), Channel()
    the_job = job("HandoverSent", "deliver_handover:handover_package:destination")
    facts = FactSource(webhook=webhook, redirected=True)
    assert runner(store, {EMAIL: email, WEBHOOK: channel}, facts).run(the_job) == "done"
    assert email.sent == [] and channel.sent == [] and store.status == "done"


def test_an_effect_the_table_does_not_name_is_refused() -> None:
    with pytest.raises(UnknownEffect):
        runner(Store(), {}).run(job("TravelBooked", "notify_family:lottery_won:origin"))


def test_backoff_grows_exponentially_with_equal_jitter_and_honours_retry_after() -> None:
    for retries in range(8):
        window = min(15 * 2**retries, 120)
        delays = [backoff(retries, base=15) for _ in range(50)]
        assert all(window / 2 <= d <= window for d in delays)
        assert len(set(delays)) > 1  # jittered
    # The retries of a job (MAX_ATTEMPTS - 1 of them) span minutes, not seconds: an outage of
    # the SMTP relay or the other deployment shorter than that does not dead-letter its jobs.
    assert sum(backoff(n, base=15) for n in range(MAX_ATTEMPTS - 1)) >= 112.5
    assert backoff(0, retry_after=30) == 30
    assert backoff(0, retry_after=10_000) == 120


def test_a_job_that_killed_its_worker_too_often_is_dead_lettered_and_its_event_goes_on() -> None:
    """The event's message came back after its worker died in the first job, again and again: that
    job is past its cap and filed; the jobs after it, never reached before, run now."""

    class PerJob(Store):
        def __init__(self) -> None:
            super().__init__()
            self.counts: dict[str, int] = {"notify_family:return_approved:origin": 3}
            self.outcomes: dict[str, str] = {}

        def start(self, job: Job, now: datetime) -> tuple[str, int]:
            self.counts[job.effect] = self.counts.get(job.effect, 0) + 1
            return "running", self.counts[job.effect]

        def dead_letter(self, job: Job, error: str, now: datetime, attempts: int | None = None) -> None:
            self.outcomes[job.effect] = error

        def create_task_once(self, job: Job, effect: Effect, now: datetime) -> None:
            self.outcomes[job.effect] = "done"

    store, email, sms = PerJob(), Channel(), Channel()
    outcome = runner(store, {EMAIL: email, SMS: sms}).run_event(Event("event-1", "ReturnApproved", "case-1"))
    assert outcome.failures == () and outcome.not_run == ()
    assert [job.effect for job in outcome.dead] == ["notify_family:return_approved:origin"]
    assert store.outcomes == {
        "notify_family:return_approved:origin": "gave up after 3 attempts",
        "create_task:request_travel_documents:origin": "done",
    }
    assert email.sent == sms.sent == []  # the filed job did not run again


def test_an_event_run_reports_the_jobs_an_earlier_run_filed_in_the_dead_letters() -> None:
    """A retry of an event whose notice was dead-lettered by its first run: the notice is not run
    again, and the run still reports it dead, so the event's task ends as failed."""
    store, email = Store(status="dead", attempts=1), Channel()
    event = Event("event-1", "ApplicationSubmitted", "case-1")
    outcome = runner(store, {EMAIL: email}).run_event(event)
    assert outcome.dead_before == event.jobs() and outcome.dead == outcome.failures == ()
    assert email.sent == [] and store.dead == []  # not filed a second time


def test_a_first_delivery_writes_a_task_job_done_with_its_task_and_counts_no_attempt_before() -> None:
    """Tallinn books the journey on the message's first delivery: its own task is written with
    the job's row, done, in one step; the destination's task (served elsewhere) and the notices
    are started as ever."""
    store, sms, email = EveryJobNew(), Channel(), Channel()
    outcome = runner(store, {SMS: sms, EMAIL: email}, HandedOver()).run_event(
        Event("event-1", "TravelBooked", "case-1"), first_delivery=True
    )
    assert outcome.failures == () and store.tasks == store.first == ["pre_arrival_notice"]
    assert store.started == [
        "notify_family:travel_booked:origin",
        "notify_office:pre_arrival_notice:destination",
        "create_task:airport_reception:destination",  # left to the other deployment: as ever
    ]
    assert len(sms.sent) == 1


def test_a_first_delivery_of_a_job_already_started_counts_its_attempt_as_ever() -> None:
    """A copy of the message, or a resend, finds the job's row there: start() counts the attempt
    and the task is made as on any delivery."""
    store = Store(status="running", attempts=1)
    effect = job("MonitoringVisitRecorded", "create_task:monitoring_visit:destination")
    outcome = runner(store, {}).run_event(
        Event(effect.event_id, effect.event_type, effect.case_id), first_delivery=True
    )
    assert outcome.failures == () and store.first == [] and store.tasks == ["monitoring_visit"]
    assert store.started == [effect.effect] and store.attempts == 2


def test_a_first_delivery_settles_tasks_in_one_step_and_starts_the_notices_as_ever() -> None:
    """A no-show on its first delivery: both offices' notices are started, and the journey's
    two preparations are cancelled with their jobs' rows, with no start before."""
    store, email = EveryJobNew(), Channel()
    outcome = runner(store, {EMAIL: email}).run_event(
        Event("event-1", "NoShowRecorded", "case-1"), first_delivery=True
    )
    assert outcome.failures == ()
    assert store.first == store.closed_kinds == ["pre_arrival_notice", "airport_reception"]
    assert store.started == ["notify_office:no_show:origin", "notify_office:reception_off:destination"]


def test_a_redelivery_starts_every_job_and_never_writes_a_task_in_one_step() -> None:
    store = Store()
    effect = job("MonitoringVisitRecorded", "create_task:monitoring_visit:destination")
    runner(store, {}).run_event(Event(effect.event_id, effect.event_type, effect.case_id))
    assert store.first == [] and store.started == [effect.effect] and store.tasks == ["monitoring_visit"]
