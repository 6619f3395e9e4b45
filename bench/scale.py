"""Latency of the ops dashboard's queries, the case list filters and `avrr ops status` as the
database grows: the same queries at 10,000 and at 1,000,000 cases, side by side.

Run from the repository root (as a module, like the other benches):

    .venv/bin/python -m bench.scale              # 10,000 cases, then grown to 1,000,000 (minutes)
    .venv/bin/python -m bench.scale --quick      # 2,000 then 20,000 cases, under a minute
    .venv/bin/python -m bench.scale --explain    # also EXPLAIN (ANALYZE) every query that misses

A private PostgreSQL database is made, migrated and dropped at the end (Ctrl-C and SIGTERM too).
It is loaded with set-based SQL, not through ``TransitionService``: cases in every state of the
lifecycle (most of them closed or otherwise final), between six offices paired origin to
destination, ages spread over three years, a share of the active ones stuck past their state's
``stuck_after``; each case has the history of the shortest path to its state (versions 1..n,
times from its creation to its last change), one outbox row per step (sent, but for the last
two minutes' backlog), one job per effect of each event (done; running for the last minutes;
dead or replayed for a few), dead letters, and a timer per deadline of each state it passed
(cancelled or fired; pending in its current state, a few due or overdue). Then VACUUM ANALYZE.

Each query is the real adapter call (``OpsViews``, ``CaseQueries.cases``) on a pooled engine
like the API's, timed from the call to its result: a few unmeasured runs, then ``--runs``
measured ones, p50/p95/p99. The parts of ``OpsViews.status`` are its statements, timed by
SQLAlchemy's cursor events. ``avrr ops status`` runs as a subprocess when the command exists:
its time includes starting Python, which ``avrr --help`` (printed beside it) costs alone.
The target is a p95 under 100 ms at the larger size.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

if not __package__:  # bench/ first on sys.path would shadow the transitions library
    sys.exit("run from the repository root as a module: .venv/bin/python -m bench.scale")

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url

from bench.transitions import ADMIN_URL, quiet
from workflow.adapters.db import make_engine
from workflow.adapters.migrate import upgrade
from workflow.adapters.ops_views import OVERDUE_GRACE, OpsViews
from workflow.adapters.queries import CaseFilter, CaseQueries, encode_cursor
from workflow.api.routes.ops import LIMIT as OVERVIEW_ROWS
from workflow.domain.actors import Actor, Role
from workflow.domain.effects import effects_of
from workflow.domain.lifecycle import LIFECYCLE, SAME, Lifecycle
from workflow.domain.programme import Programme

ROOT = Path(__file__).resolve().parents[1]
TARGET_MS = 100.0
START = "avrr --help (process start)"  # what any avrr command costs before it does anything
PAGE = 50  # the API's default page size
ALL = CaseFilter()

# -- the data ------------------------------------------------------------------------------------

# Share of cases per state: most have ended (closed above all); every active state has some.
# A state the lifecycle gains later gets DEFAULT_SHARE, so the bench keeps loading every state.
SHARES = {
    "closed": 0.40,
    "withdrawn": 0.10,
    "rejected": 0.08,
    "lapsed": 0.04,
    "inquiry": 0.05,
    "application_submitted": 0.03,
    "return_approved": 0.015,
    "awaiting_travel_documents": 0.02,
    "travel_documents_ready": 0.02,
    "travel_booked": 0.02,
    "no_show": 0.005,
    "departed": 0.005,
    "arrived": 0.01,
    "handover_pending": 0.01,
    "handed_over": 0.03,
    "contact_overdue": 0.005,
    "reintegration_counselling": 0.03,
    "plan_drafted": 0.015,
    "plan_submitted": 0.01,
    "plan_approved": 0.015,
    "disbursing": 0.03,
    "monitoring": 0.06,
}
DEFAULT_SHARE = 0.005
# How long a case that ended took from registration to its last change, in days (others: 60).
SPAN_DAYS = {"closed": 420, "lapsed": 200, "withdrawn": 30, "rejected": 45}
OFFICES = (
    ("tallinn", "IOM Tallinn", "EE"),
    ("riga", "IOM Riga", "LV"),
    ("vilnius", "IOM Vilnius", "LT"),
    ("kyiv", "IOM Kyiv", "UA"),
    ("tbilisi", "IOM Tbilisi", "GE"),
    ("yerevan", "IOM Yerevan", "AM"),
)
# Origin -> destination and share of cases. Tallinn and Riga (two origins), like Kyiv and Tbilisi
# (two destinations), share no case: the office filter's hardest case (see CaseQueries.shared).
PAIRS = (
    ("tallinn", "kyiv", 0.30),
    ("tallinn", "yerevan", 0.05),
    ("riga", "kyiv", 0.15),
    ("riga", "yerevan", 0.10),
    ("vilnius", "kyiv", 0.15),
    ("vilnius", "tbilisi", 0.20),
    ("vilnius", "yerevan", 0.05),
)
YEARS = 3
STUCK_SHARE = 0.03  # of the active cases: idle past their state's stuck_after
HOT_SHARE = 0.0005  # of the active cases: changed in the last ten minutes
BACKLOG_AGE = timedelta(minutes=2)  # events younger than this are not relayed yet
RUNNING_AGE = timedelta(minutes=10)  # jobs of events younger than this still run
DEAD_ONE_IN = 2000  # jobs that died: one in this many (by a hash of the key)
OPEN_FOR = timedelta(days=14)  # dead letters younger than this are not replayed yet (and 1 in 20 older)
PENDING_OVERDUE, PENDING_DUE = 0.004, 0.001  # shares of pending timers past due, beyond and within grace
CHUNK = 100_000  # cases per transaction while loading
REGISTER = "register_inquiry"  # cases registered here; inbound handovers (receive_handover) left out


@dataclass(frozen=True, slots=True)
class Step:
    trigger: str
    from_state: str | None
    to_state: str
    event_type: str
    role: str
    side: str


def paths(lifecycle: Lifecycle) -> dict[str, list[Step]]:
    """The shortest path of forward transitions from registration to each state."""
    first = lifecycle.by_trigger[REGISTER]
    found = {first.dest: [_step(first, None, first.dest)]}
    todo = deque([first.dest])
    while todo:
        state = todo.popleft()
        for t in lifecycle.transitions:
            if state in t.sources and t.dest != SAME and t.dest not in found:
                found[t.dest] = [*found[state], _step(t, state, t.dest)]
                todo.append(t.dest)
    missing = {s.name for s in lifecycle.states} - set(found)
    if missing:
        raise RuntimeError(f"no path from {REGISTER} to {sorted(missing)}")
    return found


def _step(t: Any, source: str | None, dest: str) -> Step:
    roles = sorted(r.value for r in t.roles if r is not Role.SYSTEM) or [Role.SYSTEM.value]
    return Step(t.trigger, source, dest, t.events[0], roles[0], t.sides[0])


def _reference_rows(lifecycle: Lifecycle) -> dict[str, list[dict[str, Any]]]:
    """The small tables the load joins against: states, their paths, effects, deadlines, pairs."""
    found = paths(lifecycle)
    shares = {s.name: SHARES.get(s.name, DEFAULT_SHARE) for s in lifecycle.states}
    total, lo = sum(shares.values()), 0.0
    states, path_rows = [], []
    for s in lifecycle.states:
        share = shares[s.name] / total
        steps = found[s.name]
        states.append(
            {
                "state": s.name,
                "lo": lo,
                "hi": 1.0 if s is lifecycle.states[-1] else lo + share,
                "steps": len(steps),
                "final": s.final,
                "stuck_s": s.stuck_after.total_seconds() if s.stuck_after else 0.0,
                "span_s": SPAN_DAYS.get(s.name, 60) * 86400.0,
                # The destination owns a case from the acceptance of its handover on.
                "destination_owns": any(step.trigger == "accept_handover" for step in steps),
            }
        )
        lo += share
        path_rows += [{"state": s.name, "step": n, **vars_of(step)} for n, step in enumerate(steps, start=1)]
    events = {row["event_type"] for row in path_rows}
    programme = Programme()
    pairs, lo = [], 0.0
    for origin, destination, share in PAIRS:
        pairs.append({"origin": origin, "destination": destination, "lo": lo, "hi": lo + share})
        lo += share
    pairs[-1]["hi"] = 1.0
    return {
        "states": states,
        "path": path_rows,
        "effects": [{"event_type": e, "effect": f.name} for e in sorted(events) for f in effects_of(e)],
        "deadlines": [
            {
                "state": s.name,
                "name": d.name,
                "fires": d.fires,
                "period_s": abs(getattr(programme, d.period).total_seconds()),
            }
            for s in lifecycle.states
            for d in s.deadlines
        ],
        "pairs": pairs,
    }


def vars_of(step: Step) -> dict[str, Any]:
    return {
        "trigger": step.trigger,
        "from_state": step.from_state,
        "to_state": step.to_state,
        "event_type": step.event_type,
        "role": step.role,
        "side": step.side,
    }


REFERENCE_DDL = """
CREATE TEMP TABLE bench_states (state text PRIMARY KEY, lo float8, hi float8, steps int, final bool,
    stuck_s float8, span_s float8, destination_owns bool);
CREATE TEMP TABLE bench_path (state text, step int, trigger text, from_state text, to_state text,
    event_type text, role text, side text, PRIMARY KEY (state, step));
CREATE TEMP TABLE bench_effects (event_type text, effect text);
CREATE TEMP TABLE bench_deadlines (state text, name text, fires text, period_s float8);
CREATE TEMP TABLE bench_pairs (origin text, destination text, lo float8, hi float8)
"""

# Each round draws its cases into a temporary table, from which every other table is filled.
# Times: a final case changed last at any time in the last YEARS years; an active one within its
# state's stuck_after (STUCK_SHARE of them up to three times longer ago; HOT_SHARE minutes ago).
# It was created span (its state's typical duration, +-50 %) before; its steps are spread evenly.
ROUND_CASES = """
CREATE TEMP TABLE round_cases ON COMMIT DROP AS
SELECT id, state, steps, origin, destination, owner, updated_at,
       updated_at - span_s * (0.5 + r_span) * interval '1 second' AS created_at
FROM (
    SELECT md5('avrr-scale-' || r.g)::uuid::text AS id, s.state, s.steps, p.origin, p.destination,
           CASE WHEN s.destination_owns THEN p.destination ELSE p.origin END AS owner, s.span_s, r.r_span,
           CASE
               WHEN s.final THEN :now - r.r_age * interval '1 day' * 365 * :years
               WHEN r.r_kind < :hot THEN :now - r.r_age * interval '10 minutes'
               WHEN r.r_kind < :hot + :stuck THEN :now - s.stuck_s * (1 + 2 * r.r_age) * interval '1 second'
               ELSE :now - s.stuck_s * r.r_age * interval '1 second'
           END AS updated_at
    FROM (
        SELECT g, random() AS r_state, random() AS r_pair, random() AS r_age, random() AS r_kind,
               random() AS r_span
        FROM generate_series(CAST(:first AS int), CAST(:last AS int)) AS g
    ) AS r
    JOIN bench_states AS s ON r.r_state >= s.lo AND r.r_state < s.hi
    JOIN bench_pairs AS p ON r.r_pair >= p.lo AND r.r_pair < p.hi
) AS drawn
"""

# The time of step n of a case, and its event's id: every table below derives them alike.
STEP_AT = "c.created_at + (c.updated_at - c.created_at) * ((p.step - 1)::float8 / greatest(c.steps - 1, 1))"
EVENT_ID = "md5('avrr-scale-event-' || c.id || '-' || p.step)::uuid::text"
ACTOR_OFFICE = "CASE p.side WHEN 'origin' THEN c.origin ELSE c.destination END"
SHARING = ", ".join(f"'{t.trigger}'" for t in LIFECYCLE.transitions if t.shares)

LOAD_STATEMENTS = {
    # Shared with the destination office from the path's first sharing transition (its booking).
    "cases": f"""
INSERT INTO cases (id, state, version, lifecycle_version, origin_office, destination_office, owner_office,
                   language, channel, created_at, updated_at, state_entered_at, shared_at)
SELECT c.id, c.state, c.steps, :lifecycle, c.origin, c.destination, c.owner, 'uk', 'walk_in', c.created_at,
       c.updated_at, c.updated_at,
       (SELECT min({STEP_AT}) FROM bench_path AS p WHERE p.state = c.state AND p.trigger IN ({SHARING}))
FROM round_cases AS c
""",
    "case_history": f"""
INSERT INTO case_history (case_id, version, trigger, from_state, to_state, actor_id, actor_office, payload,
                          lifecycle_version, occurred_at)
SELECT c.id, p.step, p.trigger, p.from_state, p.to_state,
       CASE p.role WHEN 'system' THEN 'system:timers' ELSE {ACTOR_OFFICE} || '-' || p.role END,
       CASE p.role WHEN 'system' THEN NULL ELSE {ACTOR_OFFICE} END, '{{}}'::jsonb, :lifecycle, {STEP_AT}
FROM round_cases AS c JOIN bench_path AS p ON p.state = c.state
""",
    "outbox": f"""
INSERT INTO outbox (event_id, case_id, case_version, event_type, payload, occurred_at, sent_at, attempts)
SELECT {EVENT_ID}, c.id, p.step, p.event_type, '{{}}'::jsonb, at,
       CASE WHEN at > :now - :backlog_age THEN NULL ELSE at + interval '30 milliseconds' END,
       CASE WHEN at > :now - :backlog_age THEN 0 ELSE 1 END
FROM round_cases AS c JOIN bench_path AS p ON p.state = c.state
CROSS JOIN LATERAL (SELECT {STEP_AT} AS at) AS t
""",
    # A job per effect of each relayed event: done; running when the event is recent; dead (its
    # dead letter open) or done again after a replay for one key in DEAD_ONE_IN.
    "jobs": f"""
WITH job AS (
    INSERT INTO jobs (event_id, effect, case_id, event_type, status, attempts, last_error, started_at,
                      finished_at)
    SELECT event_id, effect, case_id, event_type,
           CASE WHEN at > :now - :running_age THEN 'running' WHEN dead AND open THEN 'dead' ELSE 'done' END,
           CASE WHEN dead AND open THEN 5 ELSE 1 END,
           CASE WHEN dead THEN 'ConnectionRefusedError: [Errno 111] Connection refused' END,
           at + interval '100 milliseconds',
           CASE WHEN at > :now - :running_age THEN NULL ELSE at + interval '400 milliseconds' END
    FROM (
        SELECT {EVENT_ID} AS event_id, e.effect, c.id AS case_id, p.event_type, at,
               hashtext(c.id || p.step || e.effect) % :dead_one_in = 0 AS dead,
               at > :now - :open_for OR hashtext(c.id || e.effect) % 20 = 0 AS open
        FROM round_cases AS c JOIN bench_path AS p ON p.state = c.state
        JOIN bench_effects AS e ON e.event_type = p.event_type
        CROSS JOIN LATERAL (SELECT {STEP_AT} AS at) AS t
        WHERE at <= :now - :backlog_age
    ) AS drawn
    RETURNING *
), letter AS (
    INSERT INTO dead_letters (event_id, effect, case_id, event_type, error, attempts, dead_at, replayed_at)
    SELECT event_id, effect, case_id, event_type, last_error, 5, started_at + interval '10 minutes',
           CASE WHEN status = 'dead' THEN NULL ELSE started_at + interval '2 days' END
    FROM job WHERE last_error IS NOT NULL
    RETURNING 1
)
SELECT (SELECT count(*) FROM job), (SELECT count(*) FROM letter)
""",
    # A timer per deadline of every state on the path: pending in the case's state (a few due
    # or overdue), fired or cancelled in the states it left.
    "timers": f"""
INSERT INTO timers (id, case_id, name, state, due_at, fires_trigger, status, created_at, fired_at)
SELECT id, case_id, name, state, due_at, fires, status, at,
       CASE WHEN status = 'fired' THEN due_at END
FROM (
    SELECT md5('avrr-scale-timer-' || c.id || '-' || p.step || d.name)::uuid::text AS id, c.id AS case_id,
           d.name, d.state, d.fires, at, status,
           CASE
               WHEN status <> 'pending' THEN at + d.period_s * interval '1 second'
               WHEN r < :overdue THEN :now - :grace - r / :overdue * interval '2 hours'
               WHEN r < :overdue + :due THEN :now - (r - :overdue) / :due * :grace
               ELSE :now + r * d.period_s * interval '1 second'
           END AS due_at
    FROM round_cases AS c JOIN bench_path AS p ON p.state = c.state
    JOIN bench_deadlines AS d ON d.state = p.to_state
    CROSS JOIN LATERAL (
        SELECT {STEP_AT} AS at, random() AS r,
               CASE WHEN p.step = c.steps THEN 'pending' WHEN random() < 0.3 THEN 'fired'
                    ELSE 'cancelled' END AS status
    ) AS t
) AS drawn
""",
}


@dataclass
class Loaded:
    cases: int = 0
    seconds: float = 0.0
    rows: dict[str, int] = field(default_factory=dict)


def prepare(url: str, now: datetime) -> None:
    """Offices for the pairs, and the time the data is relative to (for ``--reuse``)."""
    db = create_engine(url)
    with db.begin() as conn:
        conn.execute(
            text("INSERT INTO offices (code, name, country) VALUES (:code, :name, :country)"),
            [{"code": c, "name": n, "country": k} for c, n, k in OFFICES],
        )
        conn.execute(text("CREATE TABLE bench_meta AS SELECT CAST(:now AS timestamptz) AS now"), {"now": now})
    db.dispose()


def reused(url: str) -> tuple[Loaded, datetime]:
    """What a kept database holds (row counts as ANALYZE estimated them) and its time."""
    db = create_engine(url, connect_args={"options": "-c TimeZone=UTC"})
    with db.connect() as conn:
        now = conn.scalar(text("SELECT now FROM bench_meta"))
        rows = {
            table: int(conn.scalar(text("SELECT reltuples FROM pg_class WHERE relname = :t"), {"t": table}))
            for table in (*LOAD_STATEMENTS, "dead_letters")
        }
    db.dispose()
    return Loaded(rows["cases"], 0.0, rows), now


def load(url: str, first: int, last: int, now: datetime, loaded: Loaded) -> None:
    """Cases ``first``..``last`` (numbers, not ids) and everything that hangs off them, then
    VACUUM ANALYZE (the visibility map lets count and list queries scan indexes only)."""
    started = time.perf_counter()
    params = {
        "now": now,
        "years": YEARS,
        "hot": HOT_SHARE,
        "stuck": STUCK_SHARE,
        "lifecycle": LIFECYCLE.version,
        "backlog_age": BACKLOG_AGE,
        "running_age": RUNNING_AGE,
        "dead_one_in": DEAD_ONE_IN,
        "open_for": OPEN_FOR,
        "overdue": PENDING_OVERDUE,
        "due": PENDING_DUE,
        "grace": OVERDUE_GRACE,
    }
    db = create_engine(url, connect_args={"options": "-c TimeZone=UTC"})
    with db.connect() as conn:
        reference(conn)
        for start in range(first, last + 1, CHUNK):
            end = min(last, start + CHUNK - 1)
            with conn.begin():
                conn.execute(text("SELECT setseed(:seed)"), {"seed": (start % 997) / 997})
                conn.execute(text(ROUND_CASES), {**params, "first": start, "last": end})
                for table, sql in LOAD_STATEMENTS.items():
                    result = conn.execute(text(sql), params)
                    # The jobs statement inserts the dead letters too, and counts both.
                    counts = result.one() if result.returns_rows else (result.rowcount,)
                    for name, count in zip((table, "dead_letters"), counts, strict=False):
                        loaded.rows[name] = loaded.rows.get(name, 0) + count
            loaded.cases = end
            print(f"  loaded {end:,} cases ({time.perf_counter() - started:.0f} s)", flush=True)
    with db.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM (ANALYZE)"))
    db.dispose()
    loaded.seconds += time.perf_counter() - started


def reference(conn: Connection) -> None:
    """The lifecycle's states, paths, effects and deadlines, and the office pairs, as temporary
    tables of this connection for the load statements to join."""
    if conn.scalar(text("SELECT to_regclass('pg_temp.bench_states') IS NOT NULL")):
        return
    for ddl in REFERENCE_DDL.split(";"):
        conn.execute(text(ddl))
    for table, rows in _reference_rows(LIFECYCLE).items():
        columns = list(rows[0])
        conn.execute(
            text(
                f"INSERT INTO bench_{table} ({', '.join(columns)}) "
                f"VALUES ({', '.join(':' + c for c in columns)})"
            ),
            rows,
        )
    conn.commit()


# -- the queries ---------------------------------------------------------------------------------


class StatementClock:
    """Times each statement the engine runs (cursor execute to result; psycopg fetches a result
    whole as it executes), so a probe's statements can be reported and explained one by one."""

    def __init__(self, db: Engine) -> None:
        self.last: list[tuple[str, Any, float]] = []
        event.listen(db, "before_cursor_execute", self._before)
        event.listen(db, "after_cursor_execute", self._after)

    def _before(self, conn: Connection, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        conn.info["bench_t0"] = time.perf_counter()

    def _after(self, conn: Connection, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        self.last.append((statement, params, time.perf_counter() - conn.info.pop("bench_t0")))


@dataclass(frozen=True, slots=True)
class Statement:
    part: str
    sql: str
    params: Any
    seconds: float


@dataclass
class Probe:
    name: str
    call: Callable[[], object]
    parts: bool = False  # report each of its statements too
    times: list[float] = field(default_factory=list)
    part_times: dict[str, list[float]] = field(default_factory=dict)
    statements: list[Statement] = field(default_factory=list)  # the last measured run's


def probes(db: Engine, now: datetime) -> list[Probe]:
    views, queries = OpsViews(db), CaseQueries(db)
    with db.connect() as conn:
        # A closed case: the longest history, events, jobs and timers.
        sample = conn.scalar(text("SELECT id FROM cases WHERE state = 'closed' ORDER BY id LIMIT 1"))
        # A third of the way through Tallinn's list: a client that has paged far.
        median = conn.scalar(
            text(
                "SELECT percentile_disc(0.33) WITHIN GROUP (ORDER BY updated_at) FROM cases"
                " WHERE origin_office = 'tallinn' OR destination_office = 'tallinn'"
            )
        )
    tallinn = Actor.of("tallinn-caseworker", "tallinn", Role.CASEWORKER)
    kyiv = Actor.of("kyiv-caseworker", "kyiv", Role.CASEWORKER)
    system = Actor.of("system:reports", None, Role.SYSTEM)
    second = queries.cases(tallinn, CaseFilter(), None, PAGE, now).next_cursor
    deep = encode_cursor(median, "") if median else None

    def cases(actor: Actor, f: CaseFilter = ALL, cursor: str | None = None) -> Callable[[], object]:
        return lambda: queries.cases(actor, f, cursor, PAGE, now)

    def overview() -> object:
        """What GET /ops/overview reads for the dashboard, the workers aside."""
        return (
            views.status(now),
            views.dead_letters(OVERVIEW_ROWS),
            views.overdue_timers(now, OVERVIEW_ROWS),
            views.stuck_cases(now, OVERVIEW_ROWS),
            views.recent_jobs(OVERVIEW_ROWS),
        )

    week = now - timedelta(days=7)
    return [
        Probe("ops overview (dashboard)", overview),
        Probe("ops status", lambda: views.status(now), parts=True),
        Probe("ops outbox_lag", lambda: views.outbox_lag(now)),
        Probe("ops cases_by_state", views.cases_by_state),
        Probe("ops stuck_cases (200)", lambda: views.stuck_cases(now)),
        Probe("ops overdue_timers (200)", lambda: views.overdue_timers(now)),
        Probe("ops recent_jobs (50)", views.recent_jobs),
        Probe("ops dead_letters (200)", views.dead_letters),
        Probe("ops timeline (closed case)", lambda: views.timeline(sample)),
        Probe("cases tallinn", cases(tallinn)),
        Probe("cases tallinn page 2", cases(tallinn, cursor=second)),
        Probe("cases tallinn deep page", cases(tallinn, cursor=deep)),
        Probe("cases tallinn state=travel_booked", cases(tallinn, CaseFilter(states=("travel_booked",)))),
        Probe(
            "cases tallinn 3 reintegration states",
            cases(tallinn, CaseFilter(states=("plan_drafted", "plan_submitted", "plan_approved"))),
        ),
        Probe("cases tallinn office=kyiv", cases(tallinn, CaseFilter(office="kyiv"))),
        Probe("cases tallinn office=riga (none)", cases(tallinn, CaseFilter(office="riga"))),
        Probe("cases tallinn overdue", cases(tallinn, CaseFilter(overdue=True))),
        Probe("cases tallinn not overdue", cases(tallinn, CaseFilter(overdue=False))),
        Probe("cases tallinn updated_since=7d", cases(tallinn, CaseFilter(updated_since=week))),
        Probe("cases kyiv office=tbilisi (none)", cases(kyiv, CaseFilter(office="tbilisi"))),
        Probe(
            "cases kyiv monitoring updated_since",
            cases(kyiv, CaseFilter(states=("monitoring",), updated_since=week)),
        ),
        Probe("cases system", cases(system)),
        Probe("cases system state=monitoring", cases(system, CaseFilter(states=("monitoring",)))),
        Probe("cases system office=tbilisi", cases(system, CaseFilter(office="tbilisi"))),
        Probe("cases system overdue", cases(system, CaseFilter(overdue=True))),
    ]


PART_NAMES = (
    (re.compile(r"FROM outbox"), "outbox lag"),
    (re.compile(r"GROUP BY"), "cases by state and office"),
    (re.compile(r"FROM jobs"), "jobs running"),
    (re.compile(r"FROM dead_letters"), "dead letters open"),
    (re.compile(r"FROM timers"), "timers due"),
    (re.compile(r"FROM cases"), "stuck count"),
)


def part_names(statements: list[tuple[str, Any, float]]) -> list[str]:
    """Names of a status call's statements; a second timers count is the overdue one."""
    names: list[str] = []
    for sql, _, _ in statements:
        name = next((n for pattern, n in PART_NAMES if pattern.search(sql)), None)
        if name is None:
            name = f"statement {len(names) + 1}"
        if name in names:
            name = "timers overdue" if name == "timers due" else f"{name} #{names.count(name) + 1}"
        names.append(name)
    return names


def measure(probe: Probe, clock: StatementClock, runs: int, warmup: int, budget: float) -> None:
    """``warmup`` unmeasured calls, then up to ``runs`` measured ones (fewer past ``budget`` s)."""
    for _ in range(warmup):
        probe.call()
    started = time.perf_counter()
    probe.times.clear()
    probe.part_times.clear()
    while len(probe.times) < runs and (len(probe.times) < 5 or time.perf_counter() - started < budget):
        clock.last = []
        t0 = time.perf_counter()
        probe.call()
        probe.times.append(time.perf_counter() - t0)
        names = part_names(clock.last) if probe.parts else [probe.name] * len(clock.last)
        probe.statements = [Statement(n, *run) for n, run in zip(names, clock.last, strict=True)]
        if probe.parts:
            for statement in probe.statements:
                probe.part_times.setdefault(statement.part, []).append(statement.seconds)


def pct(times: list[float], q: float) -> float:
    """The q-quantile in milliseconds (nearest rank)."""
    ordered = sorted(times)
    if not ordered:
        return float("nan")
    return 1000 * ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


# -- avrr ops status -----------------------------------------------------------------------------


def cli_status_argv() -> list[str] | None:
    """``avrr ops status`` with JSON and without asking the workers, if the command exists."""
    base = [sys.executable, "-m", "workflow", "ops"]
    shown = subprocess.run([*base, "status", "--help"], capture_output=True, text=True, cwd=ROOT, check=False)
    if shown.returncode != 0:
        return None
    options = [o for o in ("--json", "--no-workers") if o in shown.stdout]
    return [*base, "status", *options]


def time_cli(argv: list[str], url: str, runs: int, ok: tuple[int, ...] = (0,)) -> list[float]:
    """Seconds per process, start to exit; ``ok``: the exit codes that mean it did its work."""
    env = os.environ | {
        "AVRR_DATABASE_URL": url,
        "AVRR_ENVIRONMENT": "test",
        "AVRR_SECRET_KEY": "x" * 40,
        "AVRR_LOG_LEVEL": "WARNING",
    }
    env.pop("AVRR_BROKER_URL", None)
    times = []
    for n in range(runs + 1):
        t0 = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, cwd=ROOT, env=env, check=False)
        if done.returncode not in ok:
            raise RuntimeError(f"{' '.join(argv[2:])} exited {done.returncode}: {done.stderr[-600:]!r}")
        if n:  # the first run warms the file cache
            times.append(time.perf_counter() - t0)
    return times


# -- the report ----------------------------------------------------------------------------------


@dataclass
class Size:
    cases: int
    load_s: float
    rows: dict[str, int]
    figures: dict[str, list[float]]  # name -> measured seconds
    statements: dict[str, list[Statement]]  # probe name -> its last run's statements


def run_size(
    url: str, loaded: Loaded, now: datetime, args: argparse.Namespace, cli: list[str] | None
) -> Size:
    db = make_engine(url)
    clock = StatementClock(db)
    figures: dict[str, list[float]] = {}
    statements: dict[str, list[Statement]] = {}
    for probe in probes(db, now):
        measure(probe, clock, args.runs, args.warmup, args.budget)
        figures[probe.name] = probe.times
        statements[probe.name] = probe.statements
        for part, times in probe.part_times.items():
            figures[f"{probe.name} > {part}"] = times
    db.dispose()
    if cli is not None:
        # Exit 1: the status found something that needs a person (the data has dead letters).
        figures["avrr ops status (process)"] = time_cli(cli, url, args.cli_runs, ok=(0, 1))
        figures[START] = time_cli([sys.executable, "-m", "workflow", "--help"], url, args.cli_runs)
    size = Size(loaded.cases, loaded.seconds, dict(loaded.rows), figures, statements)
    print_size(size)
    return size


def print_size(size: Size) -> None:
    rows = ", ".join(f"{t} {n:,}" for t, n in size.rows.items())
    print(f"\n{size.cases:,} cases, loaded in {size.load_s:.1f} s: {rows}", flush=True)
    print(f"{'ms':<46} {'p50':>8} {'p95':>8} {'p99':>8} {'runs':>5}")
    for name, times in size.figures.items():
        p50, p95, p99 = pct(times, 0.5), pct(times, 0.95), pct(times, 0.99)
        print(f"{name:<46} {p50:8.2f} {p95:8.2f} {p99:8.2f} {len(times):5}")


def print_comparison(small: Size, large: Size) -> list[str]:
    """Both sizes side by side, the growth of p95, and PASS/MISS against the target; returns
    the names that miss."""
    print(
        f"\nms{'':<44} {small.cases:>10,} cases: p50     p95     p99"
        f"  {large.cases:>10,} cases: p50     p95     p99   p95 ratio  p95 < {TARGET_MS:.0f} ms"
    )
    missed = []
    for name, times in large.figures.items():
        before = small.figures.get(name, [])
        p95 = pct(times, 0.95)
        verdict = "PASS" if p95 < TARGET_MS else "MISS"
        if name == START:
            verdict = "(only the start)"
        elif verdict == "MISS":
            missed.append(name)
        print(
            f"{name:<46} {'':>16}{pct(before, 0.5):7.2f} {pct(before, 0.95):7.2f} {pct(before, 0.99):7.2f}"
            f"  {'':>16}{pct(times, 0.5):7.2f} {pct(times, 0.95):7.2f} {pct(times, 0.99):7.2f}"
            f"   x{p95 / pct(before, 0.95):7.1f}  {verdict}",
            flush=True,
        )
    return missed


def explain(url: str, size: Size, names: list[str]) -> None:
    """EXPLAIN (ANALYZE, BUFFERS) of the statements of the probes (or parts) that missed, with the
    parameters of their last measured run: each one that took a tenth of the target or more, or
    else the slowest. A fresh EXPLAIN plans for these values; the measured runs may have used a
    prepared statement's generic plan (psycopg prepares a statement from its sixth run)."""
    db = make_engine(url)
    with db.connect() as conn:
        for name in names:
            probe, _, part = name.partition(" > ")
            ran = [st for st in size.statements.get(probe, []) if not part or st.part == part]
            slow = [st for st in ran if st.seconds * 1000 >= TARGET_MS / 10]
            for st in slow or sorted(ran, key=lambda st: st.seconds)[-1:]:
                print(f"\n--- {name}: {1000 * st.seconds:.1f} ms in its last measured run\n{st.sql}")
                plan = conn.exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS) {st.sql}", st.params).scalars()
                print("\n".join(plan), flush=True)
    db.dispose()


@contextmanager
def database(args: argparse.Namespace) -> Iterator[str]:
    """A private, migrated database, dropped at the end; ``--keep`` leaves it for ``--reuse``
    (developing the queries without loading again)."""
    admin_url = make_url(args.postgres_url)
    if args.reuse:
        yield admin_url.set(database=args.reuse).render_as_string(hide_password=False)
        return
    name = f"avrr_scale_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        url = admin_url.set(database=name).render_as_string(hide_password=False)
        print(f"database {name}{'' if args.keep else ', dropped at the end'}", flush=True)
        upgrade(url)
        yield url
    finally:
        if args.keep:
            print(f"kept database {name}: --reuse {name} measures it again", flush=True)
        else:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def sizes_of(value: str) -> list[int]:
    sizes = [int(v.replace("_", "")) for v in value.split(",")]
    if sizes != sorted(set(sizes)) or sizes[0] < 1:
        raise argparse.ArgumentTypeError("sizes grow: 10000,1000000")
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=sizes_of, help="cases, growing (default 10000,1000000)")
    parser.add_argument("--runs", type=int, default=50, help="measured calls per query")
    parser.add_argument("--warmup", type=int, default=5, help="unmeasured calls before them")
    parser.add_argument("--budget", type=float, default=20.0, help="seconds per query at most (>= 5 runs)")
    parser.add_argument("--cli-runs", type=int, default=10, help="measured `avrr ops status` processes")
    parser.add_argument("--quick", action="store_true", help="2,000 then 20,000 cases; fewer runs")
    parser.add_argument("--explain", action="store_true", help="EXPLAIN ANALYZE what misses the target")
    parser.add_argument("--postgres-url", default=ADMIN_URL, help="admin URL; a private database is made")
    parser.add_argument("--keep", action="store_true", help="do not drop the database (see --reuse)")
    parser.add_argument("--reuse", metavar="NAME", help="measure a database --keep left, as it is")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.cli_runs = 20, 3
    args.sizes = args.sizes or ([2_000, 20_000] if args.quick else [10_000, 1_000_000])
    quiet()
    # Ctrl-C or SIGTERM (even when started in the background) unwinds: the database is dropped.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    cli = cli_status_argv()
    print(
        f"sizes {', '.join(f'{n:,}' for n in args.sizes)} cases; {args.runs} runs per query after "
        f"{args.warmup} warm-up; `avrr ops status`: "
        f"{' '.join(cli[2:]) + f' x{args.cli_runs}' if cli else 'not there yet (timed in-process only)'}; "
        f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs",
        flush=True,
    )
    with database(args) as url:
        results: list[Size] = []
        if args.reuse:
            loaded, now = reused(url)
            results.append(run_size(url, loaded, now, args, cli))
        else:
            now = datetime.now(UTC)
            prepare(url, now)
            loaded = Loaded()
            for cases in args.sizes:
                load(url, loaded.cases + 1, cases, now, loaded)
                results.append(run_size(url, loaded, now, args, cli))
        missed = (
            print_comparison(results[0], results[-1])
            if len(results) > 1
            else [n for n, t in results[-1].figures.items() if n != START and pct(t, 0.95) >= TARGET_MS]
        )
        print(f"\nmissed: {', '.join(missed) or 'none'}; load average {os.getloadavg()[0]:.2f}", flush=True)
        if args.explain and missed:
            explain(url, results[-1], missed)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted: the bench database is dropped")
