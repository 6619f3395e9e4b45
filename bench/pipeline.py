"""Commit-to-effect latency through the whole pipeline, against bare Celery on the same workers.

Run from the repository root (PostgreSQL and Redis on 127.0.0.1):

    .venv/bin/python -m bench.pipeline                  # rates 50,100,200,300,400/s, 10 s each
    .venv/bin/python -m bench.pipeline --quick          # smoke run, about a minute
    .venv/bin/python -m bench.pipeline --rates 100,200 --seconds 20 --workers-concurrency 4
    .venv/bin/python -m bench.pipeline --workload tasks  # database effects only, no e-mail or SMS
    .venv/bin/python -m bench.pipeline --rates 200 --drain 6000  # and a backlog drained

What runs, all real processes: a private PostgreSQL database (created, migrated, dropped), a
private Redis database number (flushed before and after), ``celery -A workers.app worker -Q avrr``
(prefork, the given concurrency), the relay as ``python -m workers.relay`` (LISTEN/NOTIFY), an
aiosmtpd sink in this process (AVRR_SMTP_HOST/PORT) and an SMS file sink (AVRR_SMS_SINK).

(a) Bare Celery: N ``avrr.noop`` tasks published in bulk and drained by the same workers; the rate
    is N over the time from the first publish until the queue lists and kombu's ``unacked`` hash
    are empty (acks are late, so an empty hash means every task body has returned). Run before and
    after the pipeline, to show how noisy the machine is.
(b) The pipeline: client processes fire transitions open-loop at each rate (slot i is due at
    t0 + i/rate, whatever happened to slot i-1). The default mix cycles register_inquiry (1 job:
    the family's e-mail and SMS), record_no_show (4 jobs: the offices' e-mails, the journey's tasks
    closed) and rebook_travel (4 jobs: family e-mail and SMS, the destination office's e-mail, two
    tasks) on cases walked to travel_booked beforehand; ``--workload tasks`` fires
    record_monitoring_visit on cases walked to monitoring (1 job: the next visit's task made, the
    one the last visit asked for marked done in the same statement; nothing sent). Each client goes
    round its own ``--cases`` cases (500), so a case sees a transition every second or two. One message per
    event carries its jobs, which run in turn. Latency is ``jobs.finished_at - outbox.occurred_at``
    for every job of every fired event; ``occurred_at`` is the fire's clock reading taken before the
    transition's writes, so it comes a few ms before the commit (the "fire" column shows how many).

(c) With ``--drain N``, after the rates: N transitions committed while the relay is stopped
    (SIGSTOP), then drained once it goes on, with the machine to itself (the clients idle): the
    relay's and the workers' own capacity, in events/s and as a ratio of bare Celery, with the
    messages the relay sent (the backlog goes packed) and the CPU per event.

A rate counts as sustained when every job finished, p99 < 1 s, the clients really fired at that
rate, no fire failed, and the backlog did not grow (latency in the last third of the run is not
more than 250 ms above the first third, and the work left when firing stopped drained within
1 s). Each rate also shows the CPU each role used: on a small machine the clients, the relay, the
SMTP sink and the databases take CPU the workers would otherwise have.
"""

from __future__ import annotations

import argparse
import itertools
import math
import multiprocessing as mp
import os
import queue
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# Run as a file, bench/ would come first on sys.path and bench/transitions.py would shadow the
# `transitions` library; the repository root is what the imports below need.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis
from celery import Celery
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from config.celery import WORKER_CONCURRENCY, celery_config
from config.logging import configure_logging
from config.settings import Settings
from workflow.adapters.db import make_engine
from workflow.adapters.migrate import upgrade
from workflow.adapters.views import ensure_office
from workflow.bootstrap import App, bootstrap
from workflow.demo import DESTINATION, HOUSEHOLD, ORIGIN, STEPS, TLL_CASEWORKER, TLL_TRAVEL

ADMIN_URL = os.environ.get("AVRR_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("AVRR_TEST_REDIS_URL", "redis://127.0.0.1:6379")
QUEUE = "avrr"  # config.celery: task_default_queue
# kombu's Redis transport: one list per priority step (0 is the bare name) and the unacked hash.
QUEUE_KEYS = [QUEUE] + [f"{QUEUE}\x06\x16{p}" for p in (3, 6, 9)]
UNACKED = "unacked"
SECRET_KEY = "bench-secret-key-of-at-least-32-characters"

REGISTRATION = {
    "origin_office": ORIGIN[0],
    "destination_office": DESTINATION[0],
    "language": "uk",
    "channel": "walk_in",
    "members": HOUSEHOLD,
}
TO_TRAVEL_BOOKED = STEPS[: 1 + next(i for i, s in enumerate(STEPS) if s.trigger == "book_travel")]
BOOKING: dict[str, Any] = TO_TRAVEL_BOOKED[-1].payload  # type: ignore[assignment]
NO_SHOW = {"reason": "missed the flight"}
_VISIT_AT = next(i for i, s in enumerate(STEPS) if s.trigger == "record_monitoring_visit")
TO_MONITORING, VISIT = STEPS[:_VISIT_AT], STEPS[_VISIT_AT]
WORKLOADS = {
    "mixed": ("register", "travel", "travel"),  # register, no-show, rebook: 9 jobs per 3 events
    "register": ("register",),  # 1 job (e-mail + SMS) per event
    "travel": ("travel",),  # no-show and rebook alternately: 8 jobs per 2 events
    # record_monitoring_visit on cases in monitoring: 1 job per event (the next visit's task made,
    # the last one's marked done in the same statement), nothing sent; the issue's own measure (the
    # effect is the handler's database row).
    "tasks": ("visit",),
}


def quiet() -> None:
    configure_logging(json=True, level="WARNING")


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (nan when empty)."""
    if not values:
        return float("nan")
    return values[min(len(values), max(1, math.ceil(q / 100 * len(values)))) - 1]


def ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{1000 * seconds:,.0f}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- the clients that fire transitions (one process each) --------------------------------------


class Firer:
    def __init__(self, url: str, cases: int, workload: str) -> None:
        settings = Settings(database_url=url, environment="test", secret_key=SECRET_KEY)  # type: ignore[arg-type]
        self.app: App = bootstrap(settings)
        self.turns = itertools.cycle(WORKLOADS[workload])
        self.state: dict[str, str] = {}
        if "travel" in WORKLOADS[workload] or "visit" in WORKLOADS[workload]:
            walk = TO_TRAVEL_BOOKED if "travel" in WORKLOADS[workload] else TO_MONITORING
            for _ in range(cases):
                case_id = self.app.transitions.create_case(TLL_CASEWORKER, REGISTRATION).case_id
                for step in walk:
                    payload = (
                        step.payload(self.app.views.case(case_id)) if callable(step.payload) else step.payload
                    )
                    self.app.transitions.fire(case_id, step.trigger, step.actor, payload)
                self.state[case_id] = "travel_booked" if walk is TO_TRAVEL_BOOKED else "monitoring"
        self.cases = itertools.cycle(list(self.state))

    def fire_one(self) -> tuple[str, ...]:
        turn = next(self.turns)
        if turn == "register":
            return self.app.transitions.create_case(TLL_CASEWORKER, REGISTRATION).event_ids
        case_id = next(self.cases)
        if turn == "visit":
            return self.app.transitions.fire(case_id, VISIT.trigger, VISIT.actor, VISIT.payload).event_ids  # type: ignore[arg-type]
        try:
            if self.state[case_id] == "travel_booked":
                result = self.app.transitions.fire(case_id, "record_no_show", TLL_TRAVEL, NO_SHOW)
            else:
                result = self.app.transitions.fire(case_id, "rebook_travel", TLL_TRAVEL, BOOKING)
        except Exception:
            self.state[case_id] = self.app.views.case(case_id)["state"]
            raise
        self.state[case_id] = result.to_state
        return result.event_ids

    def run(self, rate: float, seconds: float, t0: float, slot: int, every: int) -> dict[str, Any]:
        """Fires slots slot, slot+every, ... of the run; slot i is due at t0 + i/rate."""
        records: list[tuple[tuple[str, ...], float, float, float]] = []
        errors: Counter[str] = Counter()
        for i in range(slot, int(rate * seconds), every):
            due = t0 + i / rate
            if (delay := due - time.time()) > 0:
                time.sleep(delay)
            start = time.time()
            try:
                ids = self.fire_one()
            except Exception as exc:
                errors[type(exc).__name__] += 1
                continue
            records.append((ids, due, start, time.time()))
        return {"records": records, "errors": dict(errors)}


def firer_main(index: int, url: str, cases: int, workload: str, commands: Any, out: Any) -> None:
    quiet()
    try:
        firer = Firer(url, cases, workload)
        out.put(("ready", index, None))
        while (command := commands.get()) is not None:
            out.put(("done", index, firer.run(*command)))
    except BaseException:
        out.put(("failed", index, traceback.format_exc()))
        raise


class Firers:
    def __init__(self, url: str, count: int, cases: int, workload: str) -> None:
        ctx = mp.get_context("spawn")
        self.out = ctx.Queue()
        self.commands = [ctx.Queue() for _ in range(count)]
        self.procs = [
            ctx.Process(target=firer_main, args=(i, url, cases, workload, self.commands[i], self.out))
            for i in range(count)
        ]
        for p in self.procs:
            p.start()

    def _collect(self, timeout: float) -> list[Any]:
        results: dict[int, Any] = {}
        deadline = time.monotonic() + timeout
        while len(results) < len(self.procs):
            try:
                kind, index, value = self.out.get(timeout=1)
            except queue.Empty:
                if time.monotonic() > deadline or any(p.exitcode not in (None, 0) for p in self.procs):
                    raise RuntimeError("a client process died or hung (traceback above)") from None
                continue
            if kind == "failed":
                raise RuntimeError(f"client {index} failed:\n{value}")
            results[index] = value
        return [results[i] for i in range(len(self.procs))]

    def ready(self, timeout: float = 600) -> None:
        self._collect(timeout)

    def run(self, rate: float, seconds: float, t0: float) -> list[dict[str, Any]]:
        for i, commands in enumerate(self.commands):
            commands.put((rate, seconds, t0, i, len(self.commands)))
        return self._collect(t0 - time.time() + seconds + 120)

    def close(self) -> None:
        for commands in self.commands:
            commands.put(None)
        for p in self.procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join(5)


# -- the servers and processes around the pipeline ---------------------------------------------


@contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    """A private, migrated database for the run, dropped at the end."""
    name = f"avrr_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        upgrade(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def analyze(db: Engine) -> None:
    """Fresh planner statistics before each rate. A database in service has statistics for
    tables of its size; this one is new and grows by thousands of rows a minute, faster than
    autovacuum (one round a minute) refreshes them. On statistics taken while the tables were
    nearly empty, the plans PostgreSQL caches for the workers' prepared statements scan whole
    tables: the facts read of every notice hash-joined every household member, 68% of
    PostgreSQL's statement time at 150 transitions/s (pg_stat_statements)."""
    with db.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("ANALYZE"))


@contextmanager
def private_redis(url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield client
    finally:
        client.flushdb()
        client.close()


class SmtpCounter:
    """An aiosmtpd handler that accepts everything and only counts it."""

    def __init__(self) -> None:
        self.count = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.count += 1
        return "250 Message accepted for delivery"


@contextmanager
def smtp_sink() -> Iterator[tuple[int, SmtpCounter]]:
    from aiosmtpd.controller import Controller

    handler = SmtpCounter()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield controller.port, handler
    finally:
        controller.stop()


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def check(self) -> None:
        if self.popen.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.name} exited with {self.popen.returncode}; its log ends:\n{tail}")


@contextmanager
def process(name: str, argv: list[str], cwd: Path, env: dict[str, str]) -> Iterator[Proc]:
    """A subprocess with its output in cwd/name.log: SIGTERM at the end, SIGKILL if it lingers."""
    log = cwd / f"{name}.log"
    with log.open("ab") as out:
        popen = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield Proc(name, popen, log)
    finally:
        if popen.poll() is None:
            popen.terminate()
            try:
                popen.wait(30)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait(10)


# -- what the broker and the database hold --------------------------------------------------


class Probe:
    def __init__(self, db: Engine, broker: redis.Redis, procs: Sequence[Proc]) -> None:
        self.db, self.broker, self.procs = db, broker, procs

    def queued(self) -> tuple[int, int]:
        """Messages waiting in the queue lists, and delivered but not yet acknowledged."""
        pipe = self.broker.pipeline(transaction=False)
        for key in QUEUE_KEYS:
            pipe.llen(key)
        pipe.hlen(UNACKED)
        *lengths, unacked = pipe.execute()
        return sum(lengths), unacked

    def unsent(self) -> int:
        with self.db.connect() as conn:
            return int(conn.scalar(text("SELECT count(*) FROM outbox WHERE sent_at IS NULL")) or 0)

    def idle(self) -> bool:
        """Nothing unsent, queued, unacked or running (twice, 50 ms apart: a message a worker has
        popped but not yet filed as unacked is briefly in neither)."""
        for attempt in range(2):
            if attempt:
                time.sleep(0.05)
            with self.db.connect() as conn:
                busy = conn.scalar(
                    text(
                        "SELECT (SELECT count(*) FROM outbox WHERE sent_at IS NULL)"
                        " + (SELECT count(*) FROM jobs WHERE status NOT IN ('done', 'dead'))"
                    )
                )
            if busy or any(self.queued()):
                return False
        return True

    def wait(self, condition: Callable[[], bool], timeout: float, what: str, poll: float = 0.1) -> bool:
        deadline = time.monotonic() + timeout
        while not condition():
            for proc in self.procs:
                proc.check()
            if time.monotonic() > deadline:
                print(f"  ! timed out after {timeout:.0f} s waiting for {what}", flush=True)
                return False
            time.sleep(poll)
        return True

    def all_finished(self, jobs: dict[str, int]) -> Callable[[], bool]:
        """A condition for ``wait``: every event's ``jobs[event_id]`` jobs finished (done or
        dead). Each look asks about the events still unfinished only: a look at every event of
        a rate was thousands of index look-ups every 0.1 s while the backlog drained, on the
        PostgreSQL the workers were waiting on."""
        left = {event_id: n for event_id, n in jobs.items() if n}
        query = text(
            "SELECT event_id, count(*) FROM jobs WHERE event_id = ANY(:ids)"
            " AND status IN ('done', 'dead') GROUP BY event_id"
        )

        def done() -> bool:
            with self.db.connect() as conn:
                for event_id, n in conn.execute(query, {"ids": list(left)}).all():
                    if n >= left[event_id]:
                        del left[event_id]
            return not left

        return done


def jobs_of(db: Engine, event_ids: list[str]) -> dict[str, int]:
    """The jobs each event makes (its type's runnable effects)."""
    from workflow.service_layer.effects import runnable_effects

    with db.connect() as conn:
        rows = conn.execute(
            text("SELECT event_id, event_type FROM outbox WHERE event_id = ANY(:ids)"), {"ids": event_ids}
        ).all()
    return {event_id: len(runnable_effects(event_type)) for event_id, event_type in rows}


class Sampler(threading.Thread):
    """Samples the backlog (outbox unsent + queued + unacked) every 0.25 s while a rate runs."""

    def __init__(self, probe: Probe) -> None:
        super().__init__(daemon=True)
        self.probe, self.stop = probe, threading.Event()
        self.samples: list[tuple[float, int]] = []

    def run(self) -> None:
        while not self.stop.wait(0.25):
            try:
                queued, unacked = self.probe.queued()
                self.samples.append((time.time(), self.probe.unsent() + queued + unacked))
            except Exception:  # a probe failing must not end the run; the figure is only shown
                continue

    def at(self, moment: float) -> int:
        before = [n for t, n in self.samples if t <= moment]
        return before[-1] if before else 0


TICK = os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds by role, read from /proc: the workers (main process and pool; the main process
    alone again as "(of which main)"), the relay, the client processes, this process (the SMTP
    sink and the probes) and the whole PostgreSQL and Redis servers (other databases' load
    included); and how busy the machine's CPUs were."""

    def __init__(self, worker: Proc, relay: Proc) -> None:
        self.worker, self.relay = worker.popen.pid, relay.popen.pid
        self.clients: list[int] = []  # the client processes, once started

    def snapshot(self) -> dict[str, float]:
        procs: dict[int, tuple[int, str, float]] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue  # exited while we looked
            comm, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
            procs[int(entry.name)] = (int(rest[1]), comm, (int(rest[11]) + int(rest[12])) / TICK)
        tree, frontier = {self.worker}, [self.worker]
        while frontier:
            parent = frontier.pop()
            children = [pid for pid, (ppid, _, _) in procs.items() if ppid == parent]
            tree.update(children)
            frontier += children

        def cpu(pids: Any) -> float:
            return sum(procs[p][2] for p in pids if p in procs)

        with open("/proc/stat") as f:
            jiffies = [int(x) for x in f.readline().split()[1:]]
        return {
            "workers": cpu(tree),
            "(of which main)": cpu([self.worker]),  # the consumer: broker I/O, acks, the pool's pipes
            "relay": cpu([self.relay]),
            "clients": cpu(self.clients),
            "bench+smtp": cpu([os.getpid()]),
            "postgres": cpu(pid for pid, (_, comm, _) in procs.items() if comm == "postgres"),
            "redis": cpu(pid for pid, (_, comm, _) in procs.items() if comm == "redis-server"),
            "_idle": (jiffies[3] + jiffies[4]) / TICK,
            "_total": sum(jiffies[:8]) / TICK,
            "_wall": time.time(),
        }


def cpu_delta(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: b[k] - a[k] for k in a}


# -- (a) bare Celery ---------------------------------------------------------------------------


@dataclass
class Bare:
    rate: float  # first publish -> queue empty and all acked: the figure the ratio uses
    published: float  # publish rate of that run: if close to ``rate``, publishing was the limit
    prefilled: float = float("nan")  # the same tasks queued first, then consumed: drain rate only
    worker_cpu_ms: float = float("nan")  # the workers' CPU per task while draining the full queue


def bare_celery(app: Celery, probe: Probe, tasks: int, meter: CpuMeter | None = None) -> Bare:
    """Bare Celery no-op tasks through the same workers, measured two ways: published in bulk
    while the workers consume (first publish to drained), and queued while the workers' consumer
    is cancelled, then drained (consumption alone, publishing excluded)."""
    probe.wait(lambda: not any(probe.queued()), 60, "an empty queue")
    start = time.perf_counter()
    _publish(app, tasks)
    published = time.perf_counter()
    _drain(probe, tasks)
    result = Bare(tasks / (time.perf_counter() - start), tasks / (published - start))
    if meter is not None:
        replies = app.control.cancel_consumer(QUEUE, reply=True, timeout=5, limit=1)
        if replies:
            time.sleep(0.2)
            _publish(app, tasks)
            cpu0, start = meter.snapshot(), time.perf_counter()
            app.control.add_consumer(QUEUE, reply=True, timeout=5, limit=1)
            _drain(probe, tasks)
            result.prefilled = tasks / (time.perf_counter() - start)
            result.worker_cpu_ms = 1000 * cpu_delta(cpu0, meter.snapshot())["workers"] / tasks
    return result


def _publish(app: Celery, tasks: int) -> None:
    with app.producer_or_acquire() as producer:
        for i in range(tasks):
            app.send_task("avrr.noop", args=[i], producer=producer)


def _drain(probe: Probe, tasks: int) -> None:
    def drained() -> bool:
        if any(probe.queued()):
            return False
        time.sleep(0.02)  # popped by a worker but not yet in the unacked hash: look again
        return not any(probe.queued())

    probe.wait(drained, max(120, tasks / 50), "the no-op tasks to drain", poll=0.01)


# -- (b) one rate through the pipeline ------------------------------------------------------


@dataclass
class RateResult:
    rate: float
    fired: int = 0
    achieved: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)
    lag_p99: float = float("nan")
    fire_p50: float = float("nan")  # occurred_at -> the fire returned (its commit)
    events: int = 0
    jobs: int = 0
    unfinished: int = 0
    dead: int = 0
    retried: int = 0
    per_type: dict[str, tuple[int, int]] = field(default_factory=dict)  # events, jobs
    latency: list[float] = field(default_factory=list)  # per job, sorted
    event_latency: list[float] = field(default_factory=list)  # last job of each event, sorted
    from_commit: list[float] = field(default_factory=list)  # per job, from the fire's return
    stages: dict[str, list[float]] = field(default_factory=dict)
    handler_by_kind: dict[str, float] = field(default_factory=dict)
    early_p50: float = float("nan")
    late_p50: float = float("nan")
    drain: float = float("nan")
    backlog_max: int = 0
    backlog_end: int = 0
    mails: int = 0
    sms: int = 0
    messages: int = 0  # messages published while this rate ran (Redis LPUSH calls)
    cpu_firing: dict[str, float] = field(default_factory=dict)  # CPU deltas while firing
    cpu_all: dict[str, float] = field(default_factory=dict)  # from the start until drained
    verdict: list[str] = field(default_factory=list)

    @property
    def sustained(self) -> bool:
        return not self.verdict


def run_rate(
    rate: float,
    seconds: float,
    firers: Firers,
    probe: Probe,
    meter: CpuMeter,
    smtp: SmtpCounter,
    sms: Path,
) -> RateResult:
    result = RateResult(rate)
    mails0, sms0 = smtp.count, _lines(sms)
    sampler = Sampler(probe)
    t0 = time.time() + 0.5
    sampler.start()
    pushes0 = _lpush_calls(probe.broker)
    cpu0 = meter.snapshot()
    try:
        outputs = firers.run(rate, seconds, t0)
        result.cpu_firing = cpu_delta(cpu0, meter.snapshot())
        records = [r for out in outputs for r in out["records"]]
        for out in outputs:
            for name, n in out["errors"].items():
                result.errors[name] = result.errors.get(name, 0) + n
        result.fired = len(records)
        if not records:
            result.verdict.append("nothing fired")
            return result
        last_commit = max(r[3] for r in records)
        result.achieved = len(records) / max(seconds, last_commit - t0)
        result.lag_p99 = pct(sorted(r[2] - r[1] for r in records), 99)
        committed = {eid: end for ids, _, _, end in records for eid in ids}
        event_ids = list(committed)

        jobs = jobs_of(probe.db, event_ids)
        expected = sum(jobs.values())
        drained = probe.wait(probe.all_finished(jobs), max(60, 3 * seconds), "this rate's jobs", 0.1)
    finally:
        sampler.stop.set()
        sampler.join(5)
    result.cpu_all = cpu_delta(cpu0, meter.snapshot())
    result.messages = _lpush_calls(probe.broker) - pushes0
    if not drained:
        result.verdict.append("jobs left unfinished")
    time.sleep(0.3)  # the SMTP sink and SMS file settle
    result.mails, result.sms = smtp.count - mails0, _lines(sms) - sms0
    result.backlog_max = max((n for _, n in sampler.samples), default=0)
    result.backlog_end = sampler.at(t0 + seconds)
    _measure(result, probe, event_ids, committed, expected)
    _judge(result, seconds, t0)
    return result


def _lines(path: Path) -> int:
    try:
        with path.open("rb") as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


def _measure(
    result: RateResult, probe: Probe, event_ids: list[str], committed: dict[str, float], expected: int
) -> None:
    query = text(
        "SELECT o.event_id, o.event_type, o.occurred_at, o.sent_at,"
        " j.effect, j.status, j.attempts, j.started_at, j.finished_at"
        " FROM outbox o LEFT JOIN jobs j ON j.event_id = o.event_id WHERE o.event_id = ANY(:ids)"
    )
    with probe.db.connect() as conn:
        rows = conn.execute(query, {"ids": event_ids}).all()
    events: dict[str, list[Any]] = defaultdict(list)
    per_type: dict[str, set[str]] = defaultdict(set)
    stages: dict[str, list[float]] = {"relay": [], "queue": [], "handler": []}
    handler_by_kind: dict[str, list[float]] = defaultdict(list)
    fire_tail, timeline = [], []
    for row in rows:
        per_type[row.event_type].add(row.event_id)
        if row.effect is None:
            continue
        events[row.event_id].append(row)
        if row.status == "dead":
            result.dead += 1
        if row.attempts > 1:
            result.retried += 1
        if row.status != "done" or row.finished_at is None:
            continue
        latency = (row.finished_at - row.occurred_at).total_seconds()
        result.latency.append(latency)
        result.from_commit.append(row.finished_at.timestamp() - committed[row.event_id])
        timeline.append((row.occurred_at, latency))
        if row.sent_at is not None:
            stages["relay"].append((row.sent_at - row.occurred_at).total_seconds())
            stages["queue"].append((row.started_at - row.sent_at).total_seconds())
        handler = (row.finished_at - row.started_at).total_seconds()
        stages["handler"].append(handler)
        handler_by_kind[row.effect.split(":")[0]].append(handler)
    result.events = len({r.event_id for r in rows})
    result.jobs = sum(len(v) for v in events.values())
    result.unfinished = expected - len(result.latency) - result.dead
    result.per_type = {t: (len(ids), sum(len(events[i]) for i in ids)) for t, ids in per_type.items()}
    result.latency.sort()
    result.from_commit.sort()
    result.event_latency = sorted(
        max((r.finished_at - r.occurred_at).total_seconds() for r in jobs)
        for jobs in events.values()
        if all(r.finished_at is not None for r in jobs)
    )
    result.stages = {k: sorted(v) for k, v in stages.items()}
    result.handler_by_kind = {k: statistics.median(v) for k, v in handler_by_kind.items()}
    occurred = {r.event_id: r.occurred_at for r in rows}
    fire_tail = sorted(committed[e] - occurred[e].timestamp() for e in occurred)
    result.fire_p50 = pct(fire_tail, 50)
    timeline.sort()
    third = len(timeline) // 3
    if third:
        result.early_p50 = statistics.median(lat for _, lat in timeline[:third])
        result.late_p50 = statistics.median(lat for _, lat in timeline[-third:])
    finishes = [r.finished_at.timestamp() for jobs in events.values() for r in jobs if r.finished_at]
    if finishes:
        result.drain = max(finishes) - max(committed.values())


def _judge(result: RateResult, seconds: float, t0: float) -> None:
    verdict = result.verdict
    if result.unfinished or result.dead:
        verdict.append(f"{result.unfinished} unfinished, {result.dead} dead jobs")
    if result.errors:
        verdict.append(f"fires failed: {result.errors}")
    if result.achieved < 0.95 * result.rate:
        verdict.append(f"clients fired only {result.achieved:.0f}/s")
    p99 = pct(result.latency, 99)
    if not p99 < 1.0:
        verdict.append(f"p99 {ms(p99)} ms >= 1 s")
    if result.late_p50 - result.early_p50 > 0.25:  # a queue that added 250 ms while firing
        verdict.append(f"latency grew: p50 {ms(result.early_p50)} -> {ms(result.late_p50)} ms")
    if result.drain > 1.0:
        verdict.append(f"backlog took {result.drain:.1f} s to drain after the last fire")


# -- the report ----------------------------------------------------------------------------


def report_rate(r: RateResult) -> None:
    lat = r.latency
    mix = ", ".join(f"{t} {j / e:g}" for t, (e, j) in sorted(r.per_type.items()) if e)
    print(
        f"{r.rate:>6.0f}/s  fired {r.fired} ({r.achieved:,.0f}/s, slot lag p99 {ms(r.lag_p99)} ms)  "
        f"jobs {r.jobs} = {r.jobs / max(r.events, 1):.2f}/event ({mix}); "
        f"sends: {r.mails} e-mails, {r.sms} SMS",
        flush=True,
    )
    print(
        f"          latency per job p50 {ms(pct(lat, 50))}  p95 {ms(pct(lat, 95))}  "
        f"p99 {ms(pct(lat, 99))}  max {ms(lat[-1] if lat else float('nan'))} ms;  "
        f"last job of an event p99 {ms(pct(r.event_latency, 99))} ms;  "
        f"from the fire's return p50 {ms(pct(r.from_commit, 50))} p99 {ms(pct(r.from_commit, 99))} ms",
        flush=True,
    )
    s = r.stages
    kinds = ", ".join(f"{k} {ms(v)}" for k, v in sorted(r.handler_by_kind.items()))
    print(
        f"          where (p50/p99 ms): fire's commit after occurred_at {ms(r.fire_p50)};  "
        f"relay occurred->sent {ms(pct(s.get('relay', []), 50))}/{ms(pct(s.get('relay', []), 99))};  "
        f"broker+queue sent->started {ms(pct(s.get('queue', []), 50))}/{ms(pct(s.get('queue', []), 99))};  "
        f"handler started->finished {ms(pct(s.get('handler', []), 50))}/"
        f"{ms(pct(s.get('handler', []), 99))} (p50 by kind: {kinds})",
        flush=True,
    )
    print(
        f"          backlog max {r.backlog_max}, when firing stopped {r.backlog_end}, drained "
        f"{r.drain:.2f} s after the last fire; p50 first third {ms(r.early_p50)} ms, last third "
        f"{ms(r.late_p50)} ms; retried {r.retried}, dead {r.dead}; {r.messages:,} messages "
        f"({r.events / max(r.messages, 1):.1f} events each);  "
        + ("SUSTAINED" if r.sustained else "NOT sustained: " + "; ".join(r.verdict)),
        flush=True,
    )
    if r.cpu_firing and r.cpu_all:
        f, a = r.cpu_firing, r.cpu_all
        roles = [k for k in f if not k.startswith("_")]
        shares = ", ".join(f"{k} {f[k] / f['_wall']:.2f}" for k in roles)
        busy = 1 - f["_idle"] / f["_total"] if f["_total"] else float("nan")
        per_job = ", ".join(f"{k} {1000 * a[k] / max(r.jobs, 1):.1f}" for k in roles)
        print(
            f"          CPU while firing, in cores of {os.cpu_count()}: {shares}; machine busy {busy:.0%};  "
            f"CPU ms per job until drained: {per_job}",
            flush=True,
        )


def report_bare(b: Bare, tasks: int, when: str = "") -> None:
    bound = "  (publishing was the limit)" if b.published < 1.25 * b.rate else ""
    print(
        f"bare Celery no-op{', ' + when if when else ''}: {b.rate:,.0f} tasks/s first publish to drained "
        f"({tasks} tasks, published at {b.published:,.0f}/s){bound}; "
        f"queued first then drained: {b.prefilled:,.0f} tasks/s, "
        f"worker CPU {b.worker_cpu_ms:.1f} ms per task",
        flush=True,
    )


def summary(results: list[RateResult], bares: list[Bare], args: argparse.Namespace) -> None:
    bare = statistics.mean(b.rate for b in bares)
    print(f"\n== summary (noisy: {os.cpu_count()} CPUs shared with everything else on the machine)")
    print(
        f"bare Celery no-op: {' and '.join(f'{b.rate:,.0f}' for b in bares)} tasks/s first publish to "
        f"drained (mean {bare:,.0f}), {' and '.join(f'{b.prefilled:,.0f}' for b in bares)} tasks/s from a "
        "full queue; documented ~1,000 tasks/s on this machine"
    )
    at200 = next((r for r in results if r.rate == 200), None)
    if at200 is None:
        print("at 200/s: not run (add 200 to --rates)")
    else:
        p50, p99 = pct(at200.latency, 50), pct(at200.latency, 99)
        ok50, ok99 = "met" if p50 < 0.025 else "MISSED", "met" if p99 < 0.25 else "MISSED"
        print(
            f"at 200 transitions/s: p50 {ms(p50)} ms (target < 25 ms: {ok50}), "
            f"p99 {ms(p99)} ms (target < 250 ms: {ok99})"
        )
    sustained = [r for r in results if r.sustained]
    if not sustained:
        print("sustained rate: none of the rates run was sustained")
        return
    best = max(sustained, key=lambda r: r.rate)
    per_event = best.jobs / max(best.events, 1)
    ratio = best.rate / bare
    print(
        f"highest sustained rate (p99 < 1 s, backlog flat): {best.rate:,.0f} transitions/s = "
        f"{ratio:.2f} x bare Celery (target >= 0.50: {'met' if ratio >= 0.5 else 'MISSED'}); "
        f"that is {best.rate * per_event:,.0f} jobs/s = {best.rate * per_event / bare:.2f} x bare Celery "
        f"in tasks ({per_event:.2f} jobs per event, workload {args.workload})"
    )
    failed = [r.rate for r in results if not r.sustained and r.rate < best.rate]
    if failed:
        print(f"  (lower rates that were not sustained this run, noise: {failed})")
    higher = [r for r in results if r.rate > best.rate]
    if not higher:
        print("  the highest rate run was sustained: try higher --rates")


# -- (c) a backlog drained, the clients idle ----------------------------------------------------


@dataclass
class Drain:
    events: int = 0
    jobs: int = 0
    seconds: float = float("nan")
    messages: int = 0  # messages the relay published while draining (Redis LPUSH calls)
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.events / self.seconds


def drain_backlog(count: int, firers: Firers, probe: Probe, meter: CpuMeter, relay: Proc) -> Drain:
    """``count`` transitions committed while the relay is stopped (SIGSTOP), then the relay goes
    on (SIGCONT) and the pipeline drains them with the machine to itself: the relay's and the
    workers' own capacity, which the steady rates cannot show once the clients take half the
    CPUs. Its rate is from SIGCONT until every job finished."""
    os.kill(relay.popen.pid, signal.SIGSTOP)
    try:
        fire_rate = 5000.0  # faster than the clients can go: they fire back to back
        outputs = firers.run(fire_rate, count / fire_rate, time.time() + 0.5)
    except BaseException:
        os.kill(relay.popen.pid, signal.SIGCONT)
        raise
    event_ids = [eid for out in outputs for ids, *_ in out["records"] for eid in ids]
    jobs = jobs_of(probe.db, event_ids)
    expected = sum(jobs.values())
    analyze(probe.db)
    result = Drain(len(event_ids), expected)
    pushes0 = _lpush_calls(probe.broker)
    cpu0, start = meter.snapshot(), time.perf_counter()
    os.kill(relay.popen.pid, signal.SIGCONT)
    if probe.wait(probe.all_finished(jobs), 600, "the backlog to drain", 0.05):
        result.seconds = time.perf_counter() - start
    result.cpu = cpu_delta(cpu0, meter.snapshot())
    result.messages = _lpush_calls(probe.broker) - pushes0
    return result


def _lpush_calls(broker: redis.Redis) -> int:
    """LPUSH calls the Redis server has answered (kombu publishes each message with one)."""
    stats = broker.info("commandstats").get("cmdstat_lpush") or {}
    return int(stats.get("calls", 0))


def report_drain(d: Drain, bare: float) -> None:
    roles = [k for k in d.cpu if not k.startswith("_")]
    per_event = ", ".join(f"{k} {1000 * d.cpu[k] / max(d.events, 1):.1f}" for k in roles)
    print(
        f"drain: {d.events:,} events ({d.jobs:,} jobs) committed with the relay stopped, drained in "
        f"{d.seconds:.1f} s once it went on: {d.rate:,.0f} events/s = {d.rate / bare:.2f} x bare Celery "
        f"({d.jobs / d.seconds:,.0f} jobs/s = {d.jobs / d.seconds / bare:.2f} x); "
        f"{d.messages:,} messages ({d.events / max(d.messages, 1):.1f} events each); "
        f"CPU ms per event: {per_event}",
        flush=True,
    )


# -- main ------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rates", default="50,100,200,300,400", help="transitions/s, comma-separated")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of firing per rate")
    parser.add_argument(
        "--workers-concurrency",
        type=int,
        default=WORKER_CONCURRENCY,
        help=f"prefork processes (default: config/celery.py's, {WORKER_CONCURRENCY} here)",
    )
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="mixed")
    parser.add_argument("--clients", type=int, default=4, help="client processes firing transitions")
    parser.add_argument(
        "--cases",
        type=int,
        # 500: with 20 a client (the default until the eleventh session), 40 cases took some 14
        # transitions a second each at 550/s, and their rows' churn (each version of a case in
        # its 7 indexes, dead versions pruned over and over) cost PostgreSQL 1.5-2.3 ms of CPU a
        # job against 1.2-1.5 with 1,000 cases (README.md, Benchmarks). Setting up takes longer.
        default=500,
        help="travel_booked (or monitoring) cases per client, walked there before the rates",
    )
    parser.add_argument("--noop-tasks", type=int, default=10_000, help="no-op tasks for the baseline")
    parser.add_argument("--worker-log-level", default="WARNING", help="INFO logs a line per job")
    parser.add_argument("--postgres-url", default=ADMIN_URL, help="admin URL; a private database is made")
    parser.add_argument("--redis-url", default=f"{REDIS_URL}/15", help="flushed before and after")
    parser.add_argument(
        "--drain",
        type=int,
        default=0,
        help="after the rates, commit this many transitions with the relay stopped and time the drain",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: two low rates, 3 s each")
    args = parser.parse_args()
    if args.quick:
        args.rates, args.seconds, args.noop_tasks = "20,50", 3.0, 2000
        args.clients, args.cases = 2, 5
    rates = [float(r) for r in args.rates.split(",")]
    quiet()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the finally blocks clean up

    with ExitStack() as stack:
        url = stack.enter_context(postgres_database(args.postgres_url))
        db = make_engine(url, pool_size=4)
        stack.callback(db.dispose)
        for office in (ORIGIN, DESTINATION):
            ensure_office(db, *office)
        broker = stack.enter_context(private_redis(args.redis_url))
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="avrr-bench-")))
        smtp_port, smtp = stack.enter_context(smtp_sink())
        sms = tmp / "sms.jsonl"
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),  # the processes run in the temporary directory, not in ./var
            "AVRR_ENVIRONMENT": "test",
            "AVRR_SECRET_KEY": SECRET_KEY,
            "AVRR_DATABASE_URL": url,
            "AVRR_BROKER_URL": args.redis_url,
            "AVRR_SMTP_HOST": "127.0.0.1",
            "AVRR_SMTP_PORT": str(smtp_port),
            "AVRR_SMS_SINK": str(sms),
            "AVRR_LOG_LEVEL": args.worker_log_level,
            "AVRR_LOG_JSON": "true",
        }
        worker_argv = [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-Q", QUEUE]
        worker_argv += ["-c", str(args.workers_concurrency), "-n", f"bench-{os.getpid()}@%h"]
        worker_argv += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
        worker_argv += ["-l", args.worker_log_level.lower()]
        worker = stack.enter_context(process("worker", worker_argv, tmp, env))
        relay = stack.enter_context(process("relay", [sys.executable, "-m", "workers.relay"], tmp, env))
        probe = Probe(db, broker, [worker, relay])
        celery = Celery("avrr-bench")
        celery.conf.update(celery_config(args.redis_url))
        stack.callback(celery.close)

        print(
            f"bench.pipeline: workload {args.workload}, rates {rates} for {args.seconds:g} s each, "
            f"{args.clients} client processes, worker -c {args.workers_concurrency}, "
            f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs",
            flush=True,
        )
        warm = 4 * args.workers_concurrency
        meter = CpuMeter(worker, relay)
        bare_celery(celery, probe, warm)  # the pool is up and consuming
        bares = [bare_celery(celery, probe, args.noop_tasks, meter)]
        report_bare(bares[-1], args.noop_tasks)

        firers = Firers(url, args.clients, args.cases, args.workload)
        stack.callback(firers.close)
        firers.ready()
        meter.clients = [p.pid for p in firers.procs if p.pid is not None]
        # The cases' walk to travel_booked went through the pipeline too: a warm-up; let it drain.
        probe.wait(probe.idle, 600, "the warm-up's jobs to drain", poll=0.5)

        results: list[RateResult] = []
        for rate_ in rates:
            analyze(db)
            result = run_rate(rate_, args.seconds, firers, probe, meter, smtp, sms)
            results.append(result)
            report_rate(result)
            if "jobs left unfinished" in result.verdict:
                print("  the backlog did not drain: higher rates skipped", flush=True)
                break
            probe.wait(probe.idle, 120, "an idle pipeline", poll=0.2)
            time.sleep(1.0)

        drain = drain_backlog(args.drain, firers, probe, meter, relay) if args.drain else None
        if drain is not None:
            probe.wait(probe.idle, 120, "an idle pipeline", poll=0.2)
        bares.append(bare_celery(celery, probe, args.noop_tasks, meter))
        report_bare(bares[-1], args.noop_tasks, "again, after the pipeline")
        summary(results, bares, args)
        if drain is not None:
            report_drain(drain, statistics.mean(b.rate for b in bares))


if __name__ == "__main__":
    main()
