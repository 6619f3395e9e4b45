"""Real processes for the worker and failure tests: Celery workers, relays, a private Redis.

Each helper starts an ordinary OS process with its output in a log file, so a test can kill it
the way an operator or the kernel would (SIGTERM, SIGKILL) and then read what it printed.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx
import redis
from kombu import Connection

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")
Popen = subprocess.Popen[bytes]


def wait_for(condition: Callable[[], T], timeout: float = 60.0, what: str = "condition") -> T:
    """Polls ``condition`` until it returns something truthy, and returns that."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def spawn(argv: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None) -> Popen:
    """Starts a process in the project root with stdout and stderr appended to ``log_path``."""
    with log_path.open("ab") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            list(argv),
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def stop(proc: Popen, timeout: float = 20.0) -> int:
    """SIGTERM, then SIGKILL if it does not exit in time; returns the exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    return int(proc.returncode)


def children(pid: int) -> list[int]:
    """The live child processes of ``pid``, read from /proc (for a prefork worker: its pool)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited while we looked
        # pid (comm) state ppid ...: comm may hold spaces or parentheses, so split after the last ')'
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == pid and state != "Z":
            found.append(int(entry.name))
    return sorted(found)


# -- Celery workers ---------------------------------------------------------------------------


def start_worker(
    database_url: str,
    broker_url: str,
    log_path: Path,
    concurrency: int = 2,
    env: Mapping[str, str] | None = None,
) -> Popen:
    """``celery -A workers.app worker`` (prefork) on the given database and broker."""
    worker_env = {
        "AVRR_DATABASE_URL": database_url,
        "AVRR_BROKER_URL": broker_url,
        "AVRR_LOG_LEVEL": "INFO",
        "AVRR_LOG_JSON": "false",
        **(env or {}),
    }
    argv = [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-c", str(concurrency)]
    argv += ["-n", f"test-{os.getpid()}-{time.monotonic_ns()}@%h"]
    argv += ["--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "info"]
    return spawn(argv, log_path, worker_env)


def wait_for_pool(worker: Popen, size: int, timeout: float = 30.0) -> list[int]:
    """The worker's pool processes, once it has forked ``size`` of them."""

    def pool() -> list[int]:
        if worker.poll() is not None:
            raise AssertionError(f"the worker exited with {worker.returncode}")
        found = children(worker.pid)
        return found if len(found) == size else []

    return wait_for(pool, timeout, f"a pool of {size}")


# -- the HTTP API -----------------------------------------------------------------------------


def start_api(env: dict[str, str], port: int, log: Path) -> Popen:
    """uvicorn serving workflow.api.app:create_app on loopback, once its liveness answers."""
    argv = [sys.executable, "-m", "uvicorn", "workflow.api.app:create_app", "--factory"]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    server = spawn(argv, log, env)

    def live() -> bool:
        if server.poll() is not None:
            raise AssertionError(f"uvicorn exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(live, 30, f"the API on port {port}")
    return server


# -- the outbox relay -------------------------------------------------------------------------

# The relay of workers/relay.py on its own engine and Celery app, as `avrr relay` runs it;
# ``patch`` is code run just before, to swap a part (say, the publisher) for a crashing one.
RELAY_SCRIPT = """
import os, sys, threading
from datetime import timedelta
from celery import Celery
from config.celery import celery_config
from config.logging import configure_logging
from workers import relay
from workflow.adapters.db import make_engine

database_url, broker_url, interval = sys.argv[1], sys.argv[2], float(sys.argv[3])
configure_logging(json=False, level="INFO")
engine = make_engine(database_url, pool_size=2)
app = Celery("avrr-test-relay")
app.conf.update(celery_config(broker_url))
{patch}
relay.run(engine, app, threading.Event(), interval{run_kwargs})
"""


def start_relay(
    database_url: str,
    broker_url: str,
    log_path: Path,
    interval: float = 0.2,
    patch: str = "",
    redeliver_after: float | None = None,
) -> Popen:
    """The relay's loop in a process of its own. ``redeliver_after``: its search for lost
    messages looks every second and sends again what is that many seconds old (see Sweeper)."""
    extra = (
        f", redeliver_after=timedelta(seconds={redeliver_after}), sweep_every=1.0" if redeliver_after else ""
    )
    code = RELAY_SCRIPT.format(patch=patch, run_kwargs=extra)
    env = {"AVRR_LOG_LEVEL": "INFO", "AVRR_LOG_JSON": "false"}
    return spawn([sys.executable, "-c", code, database_url, broker_url, str(interval)], log_path, env)


# -- a private Redis --------------------------------------------------------------------------


@dataclass
class RedisServer:
    """A redis-server of the test's own, on a free port, with an append-only file fsynced on
    every write: killed and restarted on the same port and directory, it keeps every message
    it acknowledged."""

    directory: Path
    port: int = field(default_factory=free_port)
    proc: Popen | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, db=db, socket_timeout=5)

    def start(self, timeout: float = 15.0) -> RedisServer:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.directory.mkdir(parents=True, exist_ok=True)
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        argv += ["--dir", str(self.directory), "--appendonly", "yes", "--appendfsync", "always"]
        argv += ["--save", "", "--daemonize", "no", "--logfile", str(self.directory / "redis.log")]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self._ready, timeout, f"redis-server on port {self.port}")
        return self

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
            raise AssertionError(f"redis-server exited with {self.proc.returncode}:\n{log}")
        try:
            with self.client() as client:
                # Answers LOADING while it replays the append-only file after a restart.
                return bool(client.ping())
        except (redis.ConnectionError, redis.BusyLoadingError, redis.TimeoutError):
            return False

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(15)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill(signal.SIGTERM)


# -- what the broker holds --------------------------------------------------------------------
# Kombu's Redis transport keeps a queue as a list of JSON messages, and each message delivered
# but not yet acknowledged in the hash ``unacked`` (delivery tag -> [message, exchange, routing
# key]) with its delivery time in the sorted set ``unacked_index``. A worker that loses its
# connection cannot put these back; Redis hands them out again once ``visibility_timeout``
# (config/celery.py: 360 s) has passed since delivery.

QUEUE = "avrr"


def job_args(message: Mapping[str, object]) -> list[tuple[str, ...]]:
    """The work one Celery message (protocol 2, JSON body) carries, as positional arguments:
    (event_id, event_type, case_id) for an event's message, with the effect after them for one
    job's; one such tuple per event for a message of several events (the relay packs a backlog)."""
    body = json.loads(base64.b64decode(str(message["body"])))
    headers = message.get("headers")
    task = headers.get("task") if isinstance(headers, Mapping) else None
    if task == "avrr.events.handle_many":
        return [tuple(event[:3]) for event in body[0]]
    return [tuple(body[0])]


def queued_jobs(client: redis.Redis, queue: str = QUEUE) -> list[tuple[str, ...]]:
    """What the queue's messages carry, one tuple per event (or job), in queue order."""
    return [args for raw in client.lrange(queue, 0, -1) for args in job_args(json.loads(raw))]


def unacked_since(client: redis.Redis, before: float) -> dict[str, list[tuple[str, ...]]]:
    """The deliveries made before ``before`` (a time.time()) and still unacknowledged."""
    tags = [tag.decode() for tag in client.zrange("unacked_index", 0, before, byscore=True)]
    held = client.hmget("unacked", tags) if tags else []
    return {tag: job_args(json.loads(raw)[0]) for tag, raw in zip(tags, held, strict=True) if raw}


def restore_now(broker_url: str, tags: Sequence[str]) -> None:
    """Puts unacknowledged deliveries back on their queue, as kombu does once their visibility
    timeout has passed: the test's way of letting 360 s pass at once."""
    with Connection(broker_url) as conn:
        qos = conn.default_channel.qos
        for tag in tags:
            qos.restore_by_tag(tag)
