"""The workers' metrics: task runs, retries, failures and durations from Celery's signals (in the
pool process that runs the task), the worker's heartbeat, and the HTTP server a scraper reads.

The server runs in the worker's main process, on ``AVRR_WORKER_METRICS_PORT`` (off when unset),
and adds up every process of the worker through PROMETHEUS_MULTIPROC_DIR (`avrr worker` makes a
private one unless it is set). Task events stay off (config/celery.py): nothing here needs them.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import structlog
from celery import Celery, bootsteps, signals
from prometheus_client import start_http_server

from config.settings import get_settings
from workflow.adapters import metrics as m

log = structlog.get_logger(__name__)
HEARTBEAT_SECONDS = 10.0

_started: dict[str, float] = {}  # task id -> perf_counter at its start, in this pool process


@dataclass
class _Listen:
    port: int | None = None
    address: str | None = None


_listen = _Listen()  # `avrr worker --metrics-port/--metrics-address`, over the settings


def serve_on(port: int | None, address: str | None = None) -> None:
    """Overrides the settings' port and address for this process's worker (`avrr worker`)."""
    _listen.port, _listen.address = port, address


@signals.task_prerun.connect
def _prerun(task_id: str, **_: Any) -> None:
    _started[task_id] = time.perf_counter()


@signals.task_postrun.connect
def _postrun(sender: Any, task_id: str, state: str | None = None, **_: Any) -> None:
    started = _started.pop(task_id, None)
    name = getattr(sender, "name", "unknown")
    m.TASK_RUNS.labels(name, (state or "unknown").lower()).inc()
    if started is not None:
        m.TASK_DURATION.labels(name).observe(time.perf_counter() - started)


@signals.task_retry.connect
def _retry(sender: Any, **_: Any) -> None:
    m.TASK_RETRIES.labels(getattr(sender, "name", "unknown")).inc()


@signals.task_failure.connect
def _failure(sender: Any, **_: Any) -> None:
    m.TASK_FAILURES.labels(getattr(sender, "name", "unknown")).inc()


@signals.worker_process_shutdown.connect
def _process_exit(pid: int | None = None, **_: Any) -> None:
    m.process_exited(pid or os.getpid())


class MetricsStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """In the worker's main process: beats every 10 s and serves the metrics when a port is set."""

    requires = {"celery.worker.components:Timer"}

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self._beat: Any = None
        self._httpd: Any = None

    def start(self, worker: Any) -> None:
        if m.misconfigured():
            log.error(
                "worker.metrics_misconfigured",
                reason="prometheus_client imported before the directory was set",
            )
        beat = m.WORKER_HEARTBEAT.labels(worker.hostname)
        beat.set(time.time())
        self._beat = worker.timer.call_repeatedly(HEARTBEAT_SECONDS, lambda: beat.set(time.time()))
        settings = get_settings()
        port = _listen.port if _listen.port is not None else settings.worker_metrics_port
        if port is None:
            return
        address = _listen.address or settings.worker_metrics_address
        if not m.multiprocess_mode():
            log.warning(
                "worker.metrics_single_process", hint="set PROMETHEUS_MULTIPROC_DIR: pool processes missing"
            )
        try:
            self._httpd, _ = start_http_server(port, address, registry=m.registry())
        except OSError as exc:  # the worker's jobs matter more than its metrics: run on without them
            log.error("worker.metrics_unavailable", port=port, error=type(exc).__name__)
            return
        log.info("worker.metrics_serving", address=address, port=port)

    def stop(self, worker: Any) -> None:
        if self._beat is not None:
            self._beat.cancel()
            self._beat = None
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None


def install(app: Celery) -> None:
    app.steps["worker"].add(MetricsStep)
