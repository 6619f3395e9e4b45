"""The pure parts of the metrics: what the effect runner reports, the scrape-time collector's
figures and cache, and a registry's exposition of this process's counters (no I/O)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import generate_latest

from tests.scrape import delta, parse, value
from tests.unit.test_effect_runner import NOW, Channel, Clock, FactSource, Store
from workflow.adapters import metrics
from workflow.adapters.ops_metrics import OpsCollector
from workflow.adapters.templates import default_templates
from workflow.demo import TLL_CASEWORKER
from workflow.domain.programme import Programme
from workflow.service_layer.effects import EffectRunner, Job
from workflow.service_layer.notifications import EMAIL, SMS
from workflow.service_layer.transitions import TransitionService

EFFECT = "notify_family:travel_booked:origin"


def notice(occurred_at: datetime | None = None) -> Job:
    return Job("event-1", "TravelBooked", "case-1", EFFECT, occurred_at)


@dataclass
class Observer:
    finished: list[tuple[str, str, float | None]] = field(default_factory=list)

    def job_finished(self, effect: str, outcome: str, latency_s: float | None) -> None:
        self.finished.append((effect, outcome, latency_s))


def runner(store: Store, observer: Observer) -> EffectRunner:
    channels = {SMS: Channel(), EMAIL: Channel()}
    return EffectRunner(
        lambda: store, Clock(), 3, FactSource(), channels, default_templates(), observer=observer
    )


def test_a_done_job_reports_the_time_since_its_event_was_committed_once() -> None:
    store, observer = Store(), Observer()
    job, run = notice(NOW - timedelta(seconds=1.5)), runner(store, observer)

    assert [run.run(job), run.run(job)] == ["done", "done"]  # the second is a redelivery
    assert observer.finished == [(EFFECT, "done", 1.5)]


def test_a_job_without_its_commit_time_is_counted_without_a_latency() -> None:
    observer = Observer()
    runner(Store(), observer).run(notice())  # a replayed dead letter, or a message from before
    assert observer.finished == [(EFFECT, "done", None)]


def test_a_job_past_its_cap_or_given_up_is_reported_dead() -> None:
    observer = Observer()
    store = Store()
    assert runner(Store(attempts=3), observer).run(notice(NOW)) == "dead"
    runner(store, observer).give_up(notice(NOW), "PermanentDeliveryError: refused")
    assert observer.finished == [(EFFECT, "dead", None)] * 2
    assert store.dead == ["PermanentDeliveryError: refused"]


def test_the_commit_time_is_not_part_of_a_jobs_identity() -> None:
    assert Job("e", "T", "c", "x", occurred_at=NOW) == Job("e", "T", "c", "x")


class DatabaseAway:
    def __enter__(self) -> DatabaseAway:
        raise ConnectionError("the database is away")

    def __exit__(self, *_: object) -> None:
        pass


@pytest.mark.parametrize(
    "trigger, label", [("submit_application", "submit_application"), ("x" * 99, "unknown")]
)
def test_a_fire_that_fails_for_no_domain_reason_is_reported_as_error(trigger: str, label: str) -> None:
    seen: list[tuple[str, str]] = []

    class Observer:
        def fired(self, trigger: str, outcome: str) -> None:
            seen.append((trigger, outcome))

    service = TransitionService(DatabaseAway, Programme(), Clock(), Observer())  # type: ignore[arg-type]
    with pytest.raises(ConnectionError):
        service.fire("case-1", trigger, TLL_CASEWORKER)
    assert seen == [(label, "error")]


@dataclass(frozen=True)
class Count:
    state: str
    office: str
    count: int


@dataclass(frozen=True)
class Status:
    outbox_backlog: int = 3
    outbox_oldest_age_s: float | None = 12.5
    dead_letters_open: int = 1
    timers_due: int = 4
    timers_overdue: int = 2
    stuck_cases: int = 0
    cases_by_state: tuple[Count, ...] = (Count("inquiry", "tallinn", 5), Count("departed", "kyiv", 1))


@dataclass
class Source:
    status_: Status | None = field(default_factory=Status)
    reads: int = 0

    def status(self, now: datetime) -> Status:
        self.reads += 1
        if self.status_ is None:
            raise ConnectionError("the database is away")
        return self.status_


class Ticks:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def collected(collector: OpsCollector) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value for m in collector.collect() for s in m.samples}


def test_the_collector_gives_the_status_as_gauges_by_state_and_office() -> None:
    samples = collected(OpsCollector(Source(), Clock()))
    assert value(samples, "avrr_cases", state="inquiry", office="tallinn") == 5
    assert value(samples, "avrr_cases", office="kyiv") == 1
    assert {name: value(samples, name) for name in (
        "avrr_outbox_backlog", "avrr_outbox_oldest_unsent_age_seconds", "avrr_dead_letters_open",
        "avrr_timers_due", "avrr_timers_overdue", "avrr_cases_stuck", "avrr_ops_status_up",
    )} == {
        "avrr_outbox_backlog": 3, "avrr_outbox_oldest_unsent_age_seconds": 12.5, "avrr_dead_letters_open": 1,
        "avrr_timers_due": 4, "avrr_timers_overdue": 2, "avrr_cases_stuck": 0, "avrr_ops_status_up": 1,
    }  # fmt: skip


def test_the_collector_reads_the_database_at_most_once_per_ttl() -> None:
    source, ticks = Source(), Ticks()
    collector = OpsCollector(source, Clock(), ttl=2.0, monotonic=ticks)
    collected(collector)
    ticks.now += 1.9
    collected(collector)
    assert source.reads == 1
    ticks.now += 0.1
    collected(collector)
    assert source.reads == 2


def test_an_unreadable_database_is_a_zero_up_gauge_not_a_failed_scrape() -> None:
    samples = collected(OpsCollector(Source(status_=None), Clock()))
    assert samples == {("avrr_ops_status_up", frozenset()): 0}


def test_no_unsent_event_is_an_age_of_zero() -> None:
    samples = collected(OpsCollector(Source(Status(outbox_backlog=0, outbox_oldest_age_s=None)), Clock()))
    assert value(samples, "avrr_outbox_oldest_unsent_age_seconds") == 0


@pytest.mark.skipif(metrics.multiprocess_mode(), reason="this process writes to PROMETHEUS_MULTIPROC_DIR")
def test_a_registry_exposes_this_process_counters_and_its_extra_collectors() -> None:
    registry = metrics.registry(OpsCollector(Source(), Clock()))
    before = parse(generate_latest(registry).decode())
    observer = metrics.PrometheusObserver()
    observer.fired("submit_application", "guard_failed")
    observer.job_finished("create_task:pre_arrival_notice", "done", 0.3)
    metrics.refused("rate_limited")
    after = parse(generate_latest(registry).decode())

    assert (
        delta(before, after, "avrr_transitions_total", trigger="submit_application", outcome="guard_failed")
        == 1
    )
    assert delta(before, after, "avrr_jobs_finished_total", outcome="done") == 1
    assert (
        delta(before, after, "avrr_effect_latency_seconds_count", effect="create_task:pre_arrival_notice")
        == 1
    )
    assert delta(before, after, "avrr_effect_latency_seconds_bucket", le="0.5") == 1
    assert delta(before, after, "avrr_requests_refused_total", reason="rate_limited") == 1
    assert value(after, "avrr_cases", state="inquiry") == 5


def test_a_naive_commit_time_is_taken_as_utc() -> None:
    observer = Observer()
    naive = (NOW - timedelta(seconds=2)).astimezone(UTC).replace(tzinfo=None)
    runner(Store(), observer).run(notice(naive))
    assert observer.finished == [(EFFECT, "done", 2.0)]
