"""Runs one effect of one event, once, however often the job is delivered.

Tasks are written in the same transaction that marks the job done. External sends cannot
share a transaction with the database, so each channel's send is recorded as delivered right
after it returns, and the send carries ``event_id/effect`` as its idempotency key: a job that
dies between the send and the record sends again with the same key, and the receiver (SMTP
Message-ID, the SMS sink, the webhook's Idempotency-Key) recognises it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog

from workflow.domain.effects import (
    CLOSE_TASKS,
    COMPLETE_TASKS,
    CREATE_TASK,
    DELIVER_ACK,
    DELIVER_HANDOVER,
    MIRRORED,
    NOTIFY_FAMILY,
    NOTIFY_OFFICE,
    TASKS_ONLY,
    Effect,
    effect_named,
    effects_of,
)
from workflow.domain.lifecycle import DESTINATION, ORIGIN
from workflow.service_layer.notifications import (
    EMAIL,
    WEBHOOK,
    Channel,
    DeliveryError,
    Message,
    PermanentDeliveryError,
    Renderer,
    TransientDeliveryError,
    idempotency_key,
)
from workflow.service_layer.ports import Clock, JobObserver, NoObserver

log = structlog.get_logger(__name__)

LOCAL = "local"  # a handover to an office of this deployment: nothing to send over the wire
HANDOVER_EVENT = "HandoverSent"


@dataclass(frozen=True, slots=True)
class Job:
    event_id: str
    event_type: str
    case_id: str
    effect: str
    # When the event was committed, as the relay read it from the outbox: what the job's
    # commit-to-effect latency is measured from. Not part of the job's identity; a replayed
    # dead letter does not carry it (its latency would be a person's, not the engine's).
    occurred_at: datetime | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Facts:
    """What a notice needs: who receives it, in which language, and the template values."""

    family_language: str
    family_contacts: Mapping[str, str]  # channel -> phone number or e-mail address
    office_language: str
    office_email: str | None
    office_webhook: str | None  # set when another deployment serves the office
    values: Mapping[str, object] = field(default_factory=dict)  # every template key's value
    owner_served: bool = True  # this deployment serves the office that owns the case
    from_elsewhere: bool = False  # the event was fired on another deployment's delivery
    shared: bool = True  # the case is shared with its destination office (cases.shared_at)

    def elsewhere(self, effect: Effect, event_type: str) -> bool:
        """The effect is another deployment's to carry out: with two deployments, a handed-over
        case has a copy in each, and a handover decision is fired in both (where it was made,
        then on the origin's copy as the decision arrives there). An event fired on another
        deployment's delivery leaves to that deployment the family's notice, unless this one
        owns the case, and the notices and tasks of the offices it does not serve here. A
        decision made here leaves the origin's notices to the origin's deployment, when another
        deployment serves it (it fires the decision too). Any other event's effects all happen
        here, the only deployment that knows of it (a pre-arrival notice, say)."""
        if effect.kind not in (NOTIFY_FAMILY, NOTIFY_OFFICE, CREATE_TASK):
            return False
        if effect.side == DESTINATION and effect.kind == NOTIFY_OFFICE and not self.shared:
            return True  # an office that never saw the case is not told of it (a withdrawal)
        if self.from_elsewhere:
            return not self.owner_served if effect.kind == NOTIFY_FAMILY else self.office_webhook is not None
        if effect.kind == CREATE_TASK and event_type not in MIRRORED and self.office_webhook is not None:
            # Its staff work in their own deployment, which has no copy of the case before the
            # handover (an airport reception the origin's booking asks for): a task here would
            # sit in a list no one of theirs reads. The office's notice is what reaches them.
            # (A decision's tasks follow the rules for events both deployments fire.)
            return True
        return (
            event_type in MIRRORED
            and effect.kind != NOTIFY_FAMILY
            and effect.side == ORIGIN
            and self.office_webhook is not None
        )


@dataclass(frozen=True, slots=True)
class Event:
    """One committed event, as one message carries it to the workers: its jobs run in turn."""

    event_id: str
    event_type: str
    case_id: str
    occurred_at: datetime | None = field(default=None, compare=False)

    def jobs(self) -> tuple[Job, ...]:
        return tuple(
            Job(self.event_id, self.event_type, self.case_id, effect.name, self.occurred_at)
            for effect in runnable_effects(self.event_type)
        )


@dataclass(frozen=True, slots=True)
class EventRun:
    """What an event's run left to do: the jobs that raised (with their error), and the jobs not
    started because an error in ``stop_on`` ended the run early."""

    failures: tuple[tuple[Job, Exception], ...] = ()
    not_run: tuple[Job, ...] = ()
    dead: tuple[Job, ...] = ()  # dead-lettered by this run for their attempt cap
    # Found in the dead letters, filed by an earlier run of the event (say, a permanent error,
    # then a retry for another job's sake).
    dead_before: tuple[Job, ...] = ()


class JobStore(Protocol):
    def start(self, job: Job, now: datetime) -> tuple[str, int]:
        """Counts an attempt (committed at once, so a crash still counts); returns status, attempts."""
        ...

    def create_task_once(self, job: Job, effect: Effect, now: datetime) -> None:
        """Writes the task and marks the job done in one transaction."""
        ...

    def settle_first(self, job: Job, effect: Effect, now: datetime) -> int | None:
        """``close_tasks`` for a job not started yet (its message's first delivery), its row
        written done in the same transaction; how many it settled. None, having written
        nothing, when the job's row is there already (or the store cannot)."""
        ...

    def create_task_first(self, job: Job, effect: Effect, now: datetime) -> bool:
        """A job not started yet (its message's first delivery): writes its row, done, with the
        task, in one transaction. False, having written nothing, when the job's row is there
        already or the case is not (or the store cannot): the job is then started as usual."""
        ...

    def close_tasks(self, job: Job, effect: Effect, now: datetime) -> int:
        """Settles the open tasks of the effect's kind and side that the case's events before
        this one made (cancelled, or done for COMPLETE_TASKS), and marks the job done, in one
        transaction; how many it settled."""
        ...

    def delivered(self, job: Job) -> frozenset[str]:
        """The channels this job has already sent on."""
        ...

    def record_delivery(self, job: Job, channel: str, now: datetime) -> None: ...

    def finish(
        self, job: Job, status: str, error: str | None, now: datetime, delivered: str | None = None
    ) -> None:
        """Marks the job finished; ``delivered`` is a channel whose send is recorded with it."""
        ...

    def dead_letter(self, job: Job, error: str, now: datetime, attempts: int | None = None) -> None:
        """Marks the job dead and files it with its error and attempts, in one transaction;
        ``attempts``, when given, is what both record (the attempt cap: the start that was
        refused counted one more than were made)."""
        ...

    def close(self) -> None:
        """The run is over: whatever the store held for it (a connection) goes back."""
        ...


class FactSource(Protocol):
    def facts(self, job: Job) -> Mapping[str, Facts]:
        """The case's facts as each side's notices see them (by ``effect.side``: the origin
        and the destination office), from one read of the case."""
        ...

    def handover_package(self, job: Job) -> dict[str, Any]:
        """Only what the destination office needs to receive the family."""
        ...

    def handover_decision(self, job: Job) -> dict[str, Any]:
        """The destination's acceptance or refusal, for the origin office's deployment."""
        ...

    def superseded_since(self, job: Job) -> bool:
        """A later event of the case named another destination office (redirect_handover) or
        ended the case: a handover package of this event goes nowhere."""
        ...


class UnknownEffect(Exception):
    """A job names an effect the lifecycle's effect table does not have."""


class EffectRunner:
    def __init__(
        self,
        jobs: Callable[[], JobStore],
        clock: Clock,
        max_attempts: int,
        facts: FactSource | None = None,
        channels: Mapping[str, Channel] | None = None,
        renderer: Renderer | None = None,
        observer: JobObserver | None = None,
    ) -> None:
        self._jobs, self._clock, self._max_attempts = jobs, clock, max_attempts
        self._facts, self._channels, self._renderer = facts, channels or {}, renderer
        self._observer = observer or NoObserver()

    def run(self, job: Job) -> str:
        """One job on its own (a replayed dead letter): raises what the job raised."""
        store = self._jobs()
        try:
            return self._run(store, job, {})
        finally:
            store.close()

    def run_event(
        self, event: Event, stop_on: tuple[type[Exception], ...] = (), first_delivery: bool = False
    ) -> EventRun:
        """Every runnable effect of the event, in the effect table's order, each as its own job
        (own row, attempts and outcome; a done job is skipped on a redelivery). A job that
        raises does not hold up the others: its error is returned for the caller to retry or
        dead-letter. An error in ``stop_on`` (a time limit) ends the run: the jobs after it
        are returned as not run.

        ``first_delivery``: the event's message is on its first delivery (not a retry, not put
        back after a lost worker), so its task and settling jobs are written done with their
        work in one step (``JobStore.create_task_first``, ``settle_first``), with no attempt
        counted before. Should that step kill its worker, the redelivery is not a first one: it
        counts attempts as ever, so the attempt cap still ends a job that kills its worker every
        time, one delivery later."""
        jobs = event.jobs()
        store = self._jobs()
        facts: dict[str, Facts] = {}  # by side: one read of the case for all the event's notices
        failures: list[tuple[Job, Exception]] = []
        dead: list[Job] = []
        before: list[Job] = []
        try:
            for index, job in enumerate(jobs):
                try:
                    if self._run(store, job, facts, dead, first_delivery) == "dead" and job not in dead:
                        before.append(job)
                except Exception as exc:
                    failures.append((job, exc))
                    if isinstance(exc, stop_on):
                        return EventRun(tuple(failures), jobs[index + 1 :], tuple(dead), tuple(before))
        finally:
            store.close()
        return EventRun(tuple(failures), dead=tuple(dead), dead_before=tuple(before))

    def _run(
        self,
        store: JobStore,
        job: Job,
        facts: dict[str, Facts],
        capped: list[Job] | None = None,
        first_delivery: bool = False,
    ) -> str:
        effect = effect_named(job.event_type, job.effect)
        if effect is None:
            raise UnknownEffect(job.effect)
        if first_delivery and self._first(store, job, effect, facts):
            return self._done(job, 1)
        status, attempts = store.start(job, self._clock.now())
        if status in ("done", "dead"):
            return status  # a redelivery or a replay of a finished job does nothing
        if attempts > self._max_attempts:
            made = attempts - 1  # the start just counted was refused: it is not an attempt
            store.dead_letter(job, f"gave up after {made} attempts", self._clock.now(), attempts=made)
            if capped is not None:
                capped.append(job)
            log.warning("job.dead_lettered", event_id=job.event_id, effect=job.effect, attempts=made)
            self._observer.job_finished(job.effect, "dead", None)
            return "dead"
        if self._skipped(store, job, effect, facts):
            pass
        elif effect.kind == CREATE_TASK:
            store.create_task_once(job, effect, self._clock.now())
        elif effect.kind in (CLOSE_TASKS, COMPLETE_TASKS):
            self._settled(job, effect, store.close_tasks(job, effect, self._clock.now()))
        else:
            last = self._send(store, job, effect, facts)
            store.finish(job, "done", None, self._clock.now(), delivered=last)
        return self._done(job, attempts)

    def _first(self, store: JobStore, job: Job, effect: Effect, facts: dict[str, Facts]) -> bool:
        """A task or settling job on its message's first delivery, done in one step with its
        row (``run_event``); False when the ordinary path is to take it."""
        if effect.kind in (CLOSE_TASKS, COMPLETE_TASKS):
            settled = store.settle_first(job, effect, self._clock.now())
            if settled is None:
                return False
            self._settled(job, effect, settled)
            return True
        return (
            effect.kind == CREATE_TASK
            and not self._elsewhere(job, effect, facts)
            and store.create_task_first(job, effect, self._clock.now())
        )

    def _settled(self, job: Job, effect: Effect, count: int) -> None:
        log.info("tasks.settled", case_id=job.case_id, kind=effect.subject, effect=effect.kind, count=count)

    def _done(self, job: Job, attempts: int) -> str:
        log.info("job.done", event_id=job.event_id, case_id=job.case_id, effect=job.effect, attempts=attempts)
        self._observer.job_finished(job.effect, "done", self._latency(job))
        return "done"

    def _skipped(self, store: JobStore, job: Job, effect: Effect, read: dict[str, Facts]) -> bool:
        """Done without doing it (``_elsewhere``): the job is marked done."""
        if not self._elsewhere(job, effect, read):
            return False
        store.finish(job, "done", None, self._clock.now())
        log.info("job.left_elsewhere", event_id=job.event_id, case_id=job.case_id, effect=job.effect)
        return True

    def _elsewhere(self, job: Job, effect: Effect, read: dict[str, Facts]) -> bool:
        """Another deployment carries this effect out (Facts.elsewhere). Settling tasks is
        never left elsewhere (where none were made it finds nothing), and the tasks of an event
        that only opens tasks (TASKS_ONLY) are not checked: their events are fired in the
        deployment serving the task's office, and a check would cost each job a read of its own
        (the notices of any other event read the same facts)."""
        if (
            self._facts is None
            or effect.kind in (CLOSE_TASKS, COMPLETE_TASKS)
            or (effect.kind == CREATE_TASK and job.event_type in TASKS_ONLY)
        ):
            return False
        if not read:
            read.update(self._facts.facts(job))
        return read[effect.side].elsewhere(effect, job.event_type)

    def give_up(self, job: Job, error: str) -> None:
        """The job's retries are spent, or its error is permanent: filed in the dead letters."""
        store = self._jobs()
        try:
            store.dead_letter(job, error, self._clock.now())
        finally:
            store.close()
        self._observer.job_finished(job.effect, "dead", None)

    def _latency(self, job: Job) -> float | None:
        if job.occurred_at is None:
            return None
        committed = job.occurred_at if job.occurred_at.tzinfo else job.occurred_at.replace(tzinfo=UTC)
        return max(0.0, (self._clock.now() - committed).total_seconds())

    def _send(self, store: JobStore, job: Job, effect: Effect, read: dict[str, Facts]) -> str | None:
        """Sends on each channel not done yet; returns the last channel sent, not yet recorded."""
        if self._facts is None or self._renderer is None:
            raise UnknownEffect(effect.kind)
        if not read:
            read.update(self._facts.facts(job))
        facts = read[effect.side]
        if effect.kind == NOTIFY_FAMILY:
            template, language = f"family.{effect.subject}", facts.family_language
            targets = dict(facts.family_contacts)
        elif effect.kind == NOTIFY_OFFICE:
            template, language = f"office.{effect.subject}", facts.office_language
            targets = {EMAIL: facts.office_email} if facts.office_email else {}
        elif effect.kind == DELIVER_ACK:
            return self._deliver_decision(store, job, facts.office_webhook)
        elif effect.kind == DELIVER_HANDOVER:
            if self._facts.superseded_since(job):
                # A retry or replay of a package the case no longer goes with (redirected, or ended):
                # the office now named reads the case as it is now, not the one this was for.
                log.warning("handover.superseded", case_id=job.case_id, event_id=job.event_id)
                return None
            if facts.office_webhook:
                return self._deliver_handover(store, job, facts.office_webhook)
            # The destination office is in this deployment: it sees the case already; tell it.
            template, language = "office.handover_received", facts.office_language
            targets = {EMAIL: facts.office_email} if facts.office_email else {}
            if LOCAL not in store.delivered(job):
                store.record_delivery(job, LOCAL, self._clock.now())
        else:
            raise UnknownEffect(effect.kind)
        if not targets:
            log.warning("notification.no_recipient", case_id=job.case_id, effect=job.effect)
            return None
        context = {key: facts.values.get(key, "") for key in self._renderer.keys(template)}
        subject, body = self._renderer.render(template, language, context)
        return self._send_each(store, job, targets.items(), subject, body, language)

    def _send_each(
        self,
        store: JobStore,
        job: Job,
        targets: Iterable[tuple[str, str]],
        subject: str,
        body: str,
        language: str,
    ) -> str | None:
        """Each send is recorded before the next one starts; the last is left for the caller to
        record with the job's ``done`` (one round trip less). A channel that fails does not stop
        the others (an SMS gateway refusing a phone number must not keep the e-mail from the
        family): every channel not sent yet is tried, what was sent is recorded, and then the
        job fails with a transient error if any failure was transient (the retry tries only the
        channels not sent), else with the first permanent one."""
        done = store.delivered(job)
        unrecorded: str | None = None
        failures: list[DeliveryError] = []
        for channel_name, address in targets:
            if channel_name in done:
                continue  # sent by an earlier attempt of this job
            channel = self._channels.get(channel_name)
            if channel is None:
                failures.append(PermanentDeliveryError(f"no {channel_name} channel configured"))
                continue
            if unrecorded is not None:
                store.record_delivery(job, unrecorded, self._clock.now())
                unrecorded = None
            key = idempotency_key(job.event_id, job.effect)
            try:
                channel.send(Message(address, channel_name, subject, body, language, key))
            except DeliveryError as exc:
                log.warning(
                    "notification.failed",
                    case_id=job.case_id,
                    effect=job.effect,
                    channel=channel_name,
                    error=type(exc).__name__,
                )
                failures.append(exc)
                continue
            unrecorded = channel_name
            log.info("notification.delivered", case_id=job.case_id, effect=job.effect, channel=channel_name)
        if failures:
            if unrecorded is not None:
                store.record_delivery(job, unrecorded, self._clock.now())
            transient = [f for f in failures if isinstance(f, TransientDeliveryError)]
            raise (transient or failures)[0]
        return unrecorded

    def _deliver_handover(self, store: JobStore, job: Job, url: str) -> str | None:
        assert self._facts is not None
        body = json.dumps(self._facts.handover_package(job), sort_keys=True, default=str)
        return self._send_each(store, job, [(WEBHOOK, url)], HANDOVER_EVENT, body, "en")

    def _deliver_decision(self, store: JobStore, job: Job, url: str | None) -> str | None:
        """To an origin office in another deployment; in this one the case itself shows it."""
        if not url:
            return None
        assert self._facts is not None
        body = json.dumps(self._facts.handover_decision(job), sort_keys=True, default=str)
        return self._send_each(store, job, [(WEBHOOK, url)], job.event_type, body, "en")


RUNNABLE_KINDS = frozenset(
    {CREATE_TASK, CLOSE_TASKS, COMPLETE_TASKS, NOTIFY_FAMILY, NOTIFY_OFFICE, DELIVER_HANDOVER, DELIVER_ACK}
)


def runnable_effects(event_type: str) -> tuple[Effect, ...]:
    """The effects the workers carry out for an event: one job each."""
    return tuple(e for e in effects_of(event_type) if e.kind in RUNNABLE_KINDS)


class DeadLetterStore(Protocol):
    def replay(self, ids: Iterable[int] | None, now: datetime, publish: Callable[[Job], None]) -> list[Job]:
        """Reopens the chosen dead letters (all when ``ids`` is None) and re-queues each."""
        ...
