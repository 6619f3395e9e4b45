"""Celery settings chosen for reliability; the broker and queue come from the caller."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

TASK_SOFT_TIME_LIMIT = 60
TASK_TIME_LIMIT = 90
# A job that killed its worker this many times is dead-lettered instead of redelivered again
# (a task or settling job's first delivery is not counted: one delivery more, README.md, Workers, 5).
MAX_ATTEMPTS = 5
# A retry waits at most this long; it rides in Redis as an ETA message, so it must stay well
# under the visibility timeout below, or Redis would hand it to a second worker as well.
RETRY_BACKOFF_MAX = 120


TIMER_POLL_SECONDS = 10.0
# A Redis command that gets no answer fails after this many seconds (see the transport options).
BROKER_SOCKET_TIMEOUT = 30.0
# Prefork processes per worker, with a broker server: two per CPU. A job spends most of its time
# waiting (PostgreSQL commits, the SMTP server, a webhook), so with one process per CPU the CPUs
# idle while jobs queue. bench/pipeline.py, mixed workload at 100 transitions/s on 2 CPUs, p50 of
# commit-to-effect: -c 2 113-170 ms, -c 3 90 ms, -c 4 22-35 ms; past what the CPUs can carry
# (150/s here) no setting keeps up. The embedded default (files as broker, usually SQLite with
# its single writer) keeps Celery's one per CPU. `avrr worker -c N` overrides either.
WORKER_CONCURRENCY = 2 * (os.cpu_count() or 1)


def celery_config(
    broker_url: str | None,
    data_dir: Path = Path("var"),
    timer_poll_seconds: float = TIMER_POLL_SECONDS,
    broker_socket_timeout: float = BROKER_SOCKET_TIMEOUT,
) -> dict[str, Any]:
    embedded = not broker_url
    broker_dir = data_dir / "broker"
    return {
        # No server for the embedded default: messages are files under ./var/broker.
        "broker_url": broker_url or "filesystem://",
        "broker_transport_options": (
            {
                "data_folder_in": str(broker_dir),
                "data_folder_out": str(broker_dir),
                "processed_folder": str(data_dir / "broker-processed"),
                # Broadcasts (ping, inspect) beside the messages, not in ./control of the cwd.
                "control_folder": str(data_dir / "broker-control"),
                "store_processed": False,
            }
            if embedded
            # Redis re-delivers an unacknowledged message after this many seconds; above the
            # hard time limit, so a slow job is never handed to a second worker while it runs.
            # A Redis host gone silent (no reset: a partition, a lost VM) fails a command after
            # broker_socket_timeout (30 s, AVRR_BROKER_SOCKET_TIMEOUT), not after the kernel's
            # retransmissions (about 15 minutes), so the relay rolls its batch back (releasing
            # the rows it holds) and tries again; keepalives find a dead idle connection. Both
            # far above a worker's 1 s BRPOP.
            else {
                "visibility_timeout": TASK_TIME_LIMIT * 4,
                "socket_timeout": broker_socket_timeout,
                "socket_connect_timeout": 5,
                "socket_keepalive": True,
            }
        ),
        # Acknowledge after the job ran: a worker that dies mid-job leaves it to be redelivered.
        "task_acks_late": True,
        # A worker process killed by the OS (OOM, kill -9) puts its job back; the attempt cap
        # kept in the database (jobs.attempts) stops a job that keeps killing workers.
        "task_reject_on_worker_lost": True,
        # So does one the hard time limit killed: its message goes back to the queue, its done
        # jobs are skipped, and the attempt cap stops a job that hangs every time.
        "task_acks_on_timeout": False,
        # One message per process at a time: nothing prefetched is stranded in a dead worker.
        "worker_prefetch_multiplier": 1,
        **({} if embedded else {"worker_concurrency": WORKER_CONCURRENCY}),
        # Soft limit raises inside the job so it can clean up; the hard limit kills the process.
        "task_soft_time_limit": TASK_SOFT_TIME_LIMIT,
        "task_time_limit": TASK_TIME_LIMIT,
        # JSON only: no pickle, nothing executable in a message, ids and types only.
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        # The database is the source of truth; results would only fill the broker.
        "task_ignore_result": True,
        "result_backend": None,
        # Keep trying when the broker is away, at start-up and while running.
        "broker_connection_retry": True,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "task_default_queue": "avrr",
        # Logging is configured by our entry point, not by Celery.
        "worker_hijack_root_logger": False,
        # Task events cost each task two Redis PUBLISH round trips in the worker's main loop
        # (received, succeeded) and one more per message in the relay (sent): 30% of a bare
        # task's worker CPU (1.35 -> 0.95 ms per no-op task, bench/pipeline.py). Off by
        # default; Flower (`avrr flower`) switches them on in the workers while it runs (its
        # enable_events option, on by default, broadcasts enable_events periodically), so it
        # still shows tasks from "received" on; only the "sent" state is not reported.
        "worker_send_task_events": False,
        "task_send_sent_event": False,
        # No task has a rate limit; the worker skips the token-bucket bookkeeping.
        "worker_disable_rate_limits": True,
        # Deadlines are rows beat claims when due; a tick not run before the next one expires,
        # so a backlog of ticks (workers down) is never run all at once later.
        "beat_schedule": {
            "fire-due-timers": {
                "task": "avrr.timers.fire_due",
                "schedule": timer_poll_seconds,
                "options": {"expires": timer_poll_seconds},
            }
        },
    }
