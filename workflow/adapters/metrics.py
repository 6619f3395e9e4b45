"""The engine's Prometheus metrics: one object each, and the registry a scrape reads.

Labels are triggers, outcomes, error codes, effects, task names and worker names: never a case
id, a person or a payload. Several processes (uvicorn workers, Celery's prefork pool) share one
set of figures through prometheus_client's multiprocess mode: with ``PROMETHEUS_MULTIPROC_DIR``
set when prometheus_client is first imported, each process writes its values to files there and
a scrape adds them up (``MultiProcessCollector``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, multiprocess, values
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

TRANSITIONS = Counter(
    "avrr_transitions",
    "Fires of a trigger by outcome: ok, replayed (an idempotent repeat), the refusal's error code, or error",
    ["trigger", "outcome"],
)
REQUESTS_REFUSED = Counter(
    "avrr_requests_refused",
    "HTTP requests answered with a problem (4xx, 5xx), by its code (/problems/<reason>)",
    ["reason"],
)
JOBS_FINISHED = Counter(
    "avrr_jobs_finished",
    "Worker jobs (one per event and effect) finished, by outcome: done or dead",
    ["effect", "outcome"],
)
EFFECT_LATENCY = Histogram(
    "avrr_effect_latency_seconds",
    "From an event's commit to the commit of its job's done, by effect (retries included)",
    ["effect"],
    buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
)
TASK_RUNS = Counter(
    "avrr_task_runs", "Celery task runs by task and outcome: success, retry or failure", ["task", "outcome"]
)
# Per event, whatever message carried it (the relay packs several events in one message under
# load, and the task metrics above count messages).
EVENTS_RUN = Counter(
    "avrr_events_run",
    "Events run by the workers, by outcome: done, retry (it goes on as a retry) or dead (it filed "
    "jobs in the dead letters and is not retried)",
    ["outcome"],
)
TASK_RETRIES = Counter("avrr_task_retries", "Celery task runs that asked to be retried", ["task"])
TASK_FAILURES = Counter("avrr_task_failures", "Celery task runs that failed for good", ["task"])
TASK_DURATION = Histogram(
    "avrr_task_duration_seconds",
    "Celery task run time in the worker process",
    ["task"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 90),
)
# The newest heartbeat of each worker across its processes (only the main process beats).
WORKER_HEARTBEAT = Gauge(
    "avrr_worker_heartbeat_timestamp_seconds",
    "Unix time of the worker's latest heartbeat",
    ["worker"],
    multiprocess_mode="max",
)


class PrometheusObserver:
    """The service layer's TransitionObserver and JobObserver, counted in the metrics above."""

    def fired(self, trigger: str, outcome: str) -> None:
        TRANSITIONS.labels(trigger, outcome).inc()

    def job_finished(self, effect: str, outcome: str, latency_s: float | None) -> None:
        JOBS_FINISHED.labels(effect, outcome).inc()
        if latency_s is not None:
            EFFECT_LATENCY.labels(effect).observe(latency_s)


def refused(reason: str) -> None:
    REQUESTS_REFUSED.labels(reason).inc()


def multiprocess_mode() -> bool:
    """True when this process writes its values to files (the directory was set at import)."""
    return values.ValueClass is not values.MutexValue


def misconfigured() -> bool:
    """``PROMETHEUS_MULTIPROC_DIR`` is set now but was not when prometheus_client was imported:
    this process's figures would never reach a scrape of the directory."""
    return bool(os.environ.get(MULTIPROC_ENV)) and not multiprocess_mode()


class _Local:
    """This process's own default registry, as one collector of another registry."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()

    def describe(self) -> Iterable[Metric]:
        return ()


def registry(*extra: Collector) -> CollectorRegistry:
    """What a scrape reads: every process's figures (multiprocess mode) or this process's own,
    and ``extra`` collectors (figures read from the database at scrape time)."""
    scraped = CollectorRegistry()
    if multiprocess_mode():
        multiprocess.MultiProcessCollector(scraped)  # type: ignore[no-untyped-call]
    else:
        scraped.register(_Local())
    for collector in extra:
        scraped.register(collector)
    return scraped


def process_exited(pid: int) -> None:
    """Drops a dead process's live-only gauges (none yet: every gauge here keeps its last value)."""
    if multiprocess_mode():
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
