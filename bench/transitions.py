"""Transitions per second through ``TransitionService.fire`` against a bare SQLAlchemy Core baseline.

Run from the repository root (as a module: a file named transitions.py would shadow the library):

    .venv/bin/python -m bench.transitions            # full run: PostgreSQL x4, x1, then SQLite
    .venv/bin/python -m bench.transitions --quick    # smoke run, about 15 s
    .venv/bin/python -m bench.transitions --profile  # pyinstrument, one process, fire and baseline

Both sides fire ``record_eligibility`` on ``inquiry`` cases: a reflexive transition whose writes
are exactly one guarded UPDATE of ``cases``, one INSERT into ``case_history`` and one INSERT into
``outbox``. ``fire`` also SELECTs the case first; the baseline tracks versions itself.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing as mp
import os
import queue
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

if not __package__:  # run as a file, bench/ comes first on sys.path and shadows the transitions library
    sys.exit("run from the repository root as a module: .venv/bin/python -m bench.transitions")

from sqlalchemy import bindparam, create_engine, insert, select, text, update
from sqlalchemy.engine import make_url

from config.logging import configure_logging
from config.settings import Settings
from workflow.adapters import tables as tb
from workflow.adapters.db import make_engine
from workflow.adapters.migrate import upgrade
from workflow.adapters.views import ensure_office
from workflow.bootstrap import bootstrap
from workflow.demo import DESTINATION, HOUSEHOLD, ORIGIN, STEPS, TLL_CASEWORKER
from workflow.domain.lifecycle import LIFECYCLE
from workflow.domain.payloads import RecordEligibility, public_view
from workflow.service_layer.payloads import parse_payload

ADMIN_URL = os.environ.get("AVRR_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
TRIGGER, EVENT, STATE = "record_eligibility", "EligibilityRecorded", "inquiry"
PAYLOAD: dict[str, Any] = STEPS[0].payload  # type: ignore[assignment]
REGISTRATION = {
    "origin_office": ORIGIN[0],
    "destination_office": DESTINATION[0],
    "language": "uk",
    "channel": "walk_in",
    "members": HOUSEHOLD,
}
POOL_SIZE = 10  # Settings.db_pool_size, which bootstrap() passes to make_engine

c = tb.cases.c
UPDATE_CASE = (
    update(tb.cases)
    .where(c.id == bindparam("case_id"), c.version == bindparam("expected"))
    .values(version=c.version + 1)  # state and updated_at come from the parameters
)
INSERT_HISTORY, INSERT_OUTBOX = insert(tb.case_history), insert(tb.outbox)
Step = Callable[[], None]


def quiet() -> None:
    """The engine's production logging set-up, at WARNING: ``case.transitioned`` is not written."""
    configure_logging(json=True, level="WARNING")


def settings(url: str) -> Settings:
    return Settings(database_url=url, environment="test", secret_key="x" * 40)  # type: ignore[arg-type]


def fire_step(url: str, case_ids: list[str]) -> Step:
    app = bootstrap(settings(url))
    ids = itertools.cycle(case_ids)

    def step() -> None:
        app.transitions.fire(next(ids), TRIGGER, TLL_CASEWORKER, PAYLOAD)

    return step


def baseline_step(url: str, case_ids: list[str]) -> Step:
    """The same three writes in one transaction, bare Core: no SELECT, no domain, no validation."""
    is_pg = make_url(url).get_backend_name() == "postgresql"
    # Same pool sizes as make_engine; no pre-ping. SQLite needs make_engine's pragmas and BEGIN IMMEDIATE.
    db = create_engine(url, pool_size=POOL_SIZE, max_overflow=POOL_SIZE) if is_pg else make_engine(url)
    with db.connect() as conn:
        versions = dict(conn.execute(select(c.id, c.version).where(c.id.in_(case_ids))).all())
    actor, ids = TLL_CASEWORKER, itertools.cycle(case_ids)
    history = {
        **{"trigger": TRIGGER, "from_state": STATE, "to_state": STATE, "reason": None, "request_id": None},
        **{"actor_id": actor.id, "actor_office": actor.office, "lifecycle_version": LIFECYCLE.version},
        "payload": public_view(parse_payload(RecordEligibility, PAYLOAD)),
    }
    data = {"trigger": TRIGGER, "from_state": STATE, "to_state": STATE}

    def step() -> None:
        case_id = next(ids)
        version, now = versions[case_id] + 1, datetime.now(UTC)
        with db.begin() as conn:
            params = {"case_id": case_id, "expected": version - 1, "state": STATE, "updated_at": now}
            if conn.execute(UPDATE_CASE, params).rowcount != 1:
                raise RuntimeError(f"version conflict on {case_id}")
            conn.execute(
                INSERT_HISTORY, {**history, "case_id": case_id, "version": version, "occurred_at": now}
            )
            event = {"event_id": str(uuid.uuid4()), "event_type": EVENT, "payload": data, "occurred_at": now}
            conn.execute(INSERT_OUTBOX, {**event, "case_id": case_id, "case_version": version})
        versions[case_id] = version

    return step


STEPS_BY_KIND = {"fire": fire_step, "baseline": baseline_step}


def timed(step: Step, warmup: float, seconds: float) -> int:
    deadline = time.perf_counter() + warmup
    while time.perf_counter() < deadline:
        step()
    done, deadline = 0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        step()
        done += 1
    return done


def worker(
    kind: str, url: str, ids: list[str], warmup: float, seconds: float, barrier: Any, out: Any
) -> None:
    quiet()
    try:
        step = STEPS_BY_KIND[kind](url, ids)
        barrier.wait()
    except BaseException:
        barrier.abort()  # the others stop waiting; this process exits non-zero with its traceback
        raise
    out.put(timed(step, warmup, seconds))


def run(kind: str, url: str, slices: list[list[str]], warmup: float, seconds: float) -> float:
    """Transitions per second summed over one process per slice, all starting together."""
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(len(slices), timeout=120), ctx.Queue()
    procs = [
        ctx.Process(target=worker, args=(kind, url, ids, warmup, seconds, barrier, out)) for ids in slices
    ]
    for p in procs:
        p.start()
    counts: list[int] = []
    try:
        while len(counts) < len(procs):
            try:
                counts.append(out.get(timeout=1))
            except queue.Empty:
                if any(p.exitcode for p in procs):
                    raise RuntimeError(f"a {kind} worker died (traceback above)") from None
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    return sum(counts) / seconds


def compare(label: str, url: str, slices: list[list[str]], args: argparse.Namespace) -> None:
    """Interleaves baseline and fire runs so drift on a noisy machine hits both alike."""
    runs: dict[str, list[float]] = {"baseline": [], "fire": []}
    for _ in range(args.rounds):
        for kind, rates in runs.items():
            rates.append(run(kind, url, slices, args.warmup, args.seconds))
    base, fire = runs["baseline"], runs["fire"]
    f, b = statistics.median(fire), statistics.median(base)
    print(
        f"{label:<9} processes={len(slices)}  fire={f:,.0f}/s  baseline={b:,.0f}/s  ratio={f / b:.2f} "
        f"(target >= 0.70)  runs: fire={[round(x) for x in fire]} baseline={[round(x) for x in base]}",
        flush=True,
    )


def create_cases(url: str, count: int) -> list[str]:
    app = bootstrap(settings(url))
    for office in (ORIGIN, DESTINATION):
        ensure_office(app.db, *office)
    ids = [app.transitions.create_case(TLL_CASEWORKER, REGISTRATION).case_id for _ in range(count)]
    app.db.dispose()
    return ids


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


def profile(url: str, ids: list[str], seconds: float, lines: int) -> None:
    from pyinstrument import Profiler

    for kind in ("baseline", "fire"):
        step = STEPS_BY_KIND[kind](url, ids)
        timed(step, 1.0, 0)
        profiler = Profiler(interval=0.0002)
        profiler.start()
        done = timed(step, 0, seconds)
        profiler.stop()
        print(f"\n=== {kind}: {done / seconds:,.0f}/s, {1000 * seconds / done:.3f} ms per call (one process)")
        print("\n".join(profiler.output_text(unicode=True, short_mode=True).splitlines()[:lines]))
        print(f"--- {kind}: top functions by self time")
        print("\n".join(profiler.output_text(unicode=True, flat=True).splitlines()[:30]))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each run")
    parser.add_argument("--processes", type=int, default=4, help="concurrent client processes")
    parser.add_argument("--cases", type=int, default=200, help="pre-created cases per process")
    parser.add_argument("--rounds", type=int, default=3, help="baseline/fire pairs; the median is shown")
    parser.add_argument("--quick", action="store_true", help="smoke run: short runs, one round")
    parser.add_argument("--profile", action="store_true", help="pyinstrument one process instead")
    parser.add_argument("--lines", type=int, default=70, help="profile tree lines to print")
    parser.add_argument("--postgres-url", default=ADMIN_URL, help="admin URL; a private database is made")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.warmup, args.rounds, args.cases = 1.5, 0.5, 1, min(args.cases, 50)
    quiet()

    with postgres_database(args.postgres_url) as url:
        ids = create_cases(url, args.cases * args.processes)
        slices = [ids[i :: args.processes] for i in range(args.processes)]
        if args.profile:
            profile(url, slices[0], 3.0 if args.quick else 6.0, args.lines)
            return
        print(
            f"{len(ids)} inquiry cases, trigger {TRIGGER}, runs of {args.seconds:g} s after "
            f"{args.warmup:g} s warm-up, load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
        )
        compare("postgres", url, slices, args)
        compare("postgres", url, slices[:1], args)

    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/bench.sqlite3"
        upgrade(url)
        compare("sqlite", url, [create_cases(url, args.cases)], args)


if __name__ == "__main__":
    main()
