"""Gauges read from the database when /metrics is scraped: cases by state and office, the outbox
backlog and its oldest event's age, open dead letters, due and overdue timers, stuck cases.

They are the same figures for every process, so only the API's /metrics registry holds this
collector (never the multiprocess files), and a scrape within ``ttl`` seconds of the last one is
answered from memory: a fast or repeated scraper cannot load the database.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from typing import Protocol

import structlog
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from workflow.service_layer.ports import Clock

log = structlog.get_logger(__name__)
SCRAPE_TTL = 2.0


class StateCount(Protocol):
    @property
    def state(self) -> str: ...
    @property
    def office(self) -> str: ...
    @property
    def count(self) -> int: ...


class Status(Protocol):
    """What workflow.adapters.ops_views.OpsStatus holds and this collector reads."""

    @property
    def outbox_backlog(self) -> int: ...
    @property
    def outbox_oldest_age_s(self) -> float | None: ...
    @property
    def dead_letters_open(self) -> int: ...
    @property
    def timers_due(self) -> int: ...
    @property
    def timers_overdue(self) -> int: ...
    @property
    def stuck_cases(self) -> int: ...
    @property
    def cases_by_state(self) -> Sequence[StateCount]: ...


class StatusSource(Protocol):
    def status(self, now: datetime) -> Status: ...


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def families(status: Status) -> list[Metric]:
    cases = GaugeMetricFamily(
        "avrr_cases", "Cases by state and the office that owns them", labels=["state", "office"]
    )
    for row in status.cases_by_state:
        cases.add_metric([row.state, row.office], row.count)
    return [
        cases,
        _gauge("avrr_outbox_backlog", "Committed events not yet handed to the broker", status.outbox_backlog),
        _gauge(
            "avrr_outbox_oldest_unsent_age_seconds",
            "Age of the oldest event not yet handed to the broker (0 when none waits)",
            status.outbox_oldest_age_s or 0.0,
        ),
        _gauge(
            "avrr_dead_letters_open",
            "Jobs that spent their attempts and are not replayed",
            status.dead_letters_open,
        ),
        _gauge("avrr_timers_due", "Pending deadlines that are due now", status.timers_due),
        _gauge(
            "avrr_timers_overdue",
            "Pending deadlines due for longer than the grace: missed",
            status.timers_overdue,
        ),
        _gauge("avrr_cases_stuck", "Cases idle in their state for longer than it allows", status.stuck_cases),
    ]


class OpsCollector:
    """A prometheus_client collector over ``source.status(now)``, cached for ``ttl`` seconds."""

    def __init__(
        self,
        source: StatusSource,
        clock: Clock,
        ttl: float = SCRAPE_TTL,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source, self._clock, self._ttl, self._monotonic = source, clock, ttl, monotonic
        self._lock = threading.Lock()
        self._cached: tuple[float, list[Metric]] | None = None

    def describe(self) -> Iterable[Metric]:
        return ()  # nothing to check at registration: no database read then

    def collect(self) -> Iterator[Metric]:
        # One reader at a time: concurrent scrapes wait for one query rather than each run it.
        with self._lock:
            if self._cached is None or self._monotonic() - self._cached[0] >= self._ttl:
                self._cached = (self._monotonic(), self._read())
            metrics = self._cached[1]
        yield from metrics

    def _read(self) -> list[Metric]:
        try:
            read = families(self._source.status(self._clock.now()))
        except Exception as exc:  # the database is away: say so, and keep the process's own figures
            log.warning("metrics.status_failed", error=type(exc).__name__)
            read = []
        up = _gauge(
            "avrr_ops_status_up", "1 when the database figures of this scrape could be read", 1 if read else 0
        )
        return [*read, up]
