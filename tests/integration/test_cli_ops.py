"""`avrr ops` as an operator runs it: the installed console script in a process of its own, on
SQLite and PostgreSQL, with a private redis-server as the broker, against state the services made.
Each command's text and its JSON are checked, and its exit code."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from tests.integration.processes import RedisServer, free_port, queued_jobs, start_worker, stop, wait_for
from tests.support import FixedClock, advance_to, jobs_of, register
from workflow.adapters import tables as tb
from workflow.adapters.jobs import SqlDeadLetters, SqlJobStore
from workflow.bootstrap import App
from workflow.service_layer.effects import Job

ROOT = Path(__file__).resolve().parents[2]
AVRR = Path(sys.executable).with_name("avrr")  # [project.scripts] in pyproject.toml
o, dl = tb.outbox.c, tb.dead_letters.c
DAY = timedelta(days=1)


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture
def clock() -> FixedClock:
    """The command reads the real clock: the story's times are set back from now."""
    return FixedClock(datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1))


@pytest.fixture
def avrr(db_url: str, redis_server: RedisServer) -> Avrr:
    return Avrr({"AVRR_DATABASE_URL": db_url, "AVRR_BROKER_URL": redis_server.url()})


class Avrr:
    """Runs `avrr ARGS` with the test's database and broker; stderr on a terminal with ``tty``
    (where the progress bar draws itself)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = os.environ | {
            "AVRR_ENVIRONMENT": "test",
            "AVRR_SECRET_KEY": "test-secret-key-of-at-least-32-characters",
            "AVRR_LOG_LEVEL": "WARNING",
            **env,
        }

    def __call__(self, *args: str, tty: bool = False, **env: str) -> Run:
        argv, environment = [str(AVRR), "ops", *args], self.env | env
        if not tty:
            done = subprocess.run(
                argv, check=False, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120
            )
            return Run(done.returncode, done.stdout, done.stderr)
        master, slave = pty.openpty()
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=environment, stdout=subprocess.PIPE, stderr=slave, text=True
        )
        os.close(slave)
        err = bytearray()
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            err += chunk
        out = proc.stdout.read() if proc.stdout else ""
        os.close(master)
        return Run(proc.wait(120), out, err.decode(errors="replace"))


def dead_letter(app: App, job: Job, error: str, at: datetime, attempts: int = 1) -> int:
    """Files ``job`` as the worker's on_failure does once its attempts are spent; its id."""
    store = SqlJobStore(app.db)
    for n in range(attempts):
        store.start(job, at - timedelta(minutes=attempts - n))
    store.dead_letter(job, error, at)
    with app.db.connect() as conn:
        return int(conn.execute(select(func.max(dl.id)).where(dl.event_id == job.event_id)).scalar_one())


def mark_all_sent(app: App) -> None:
    with app.db.begin() as conn:
        conn.execute(update(tb.outbox).values(sent_at=datetime.now(UTC)))


def open_letters(app: App) -> list[int]:
    return [d.id for d in SqlDeadLetters(app.db).open()]


def queued(server: RedisServer) -> list[tuple[str, ...]]:
    with server.client() as client:
        return list(reversed(queued_jobs(client)))  # kombu pushes on the left: oldest last


def args(jobs: Sequence[Job]) -> list[tuple[str, ...]]:
    return [(j.event_id, j.event_type, j.case_id, j.effect) for j in jobs]


# -- status -------------------------------------------------------------------------------------


def test_status_lists_what_needs_a_person_and_exits_1(app: App, clock: FixedClock, avrr: Avrr) -> None:
    now = clock.now() + timedelta(hours=1)
    clock.current = now - 40 * DAY
    stuck = register(app).case_id  # inquiry for 40 days: its state allows 30
    clock.current = now - 6 * DAY
    advance_to(app, "handover_pending")  # its 5-day acknowledgement is a day overdue
    clock.current = now - timedelta(minutes=10)
    register(app)
    job = jobs_of(app, stuck)[0]
    dead_letter(app, job, "TransientDeliveryError: SMTP connection failed", now - timedelta(hours=2), 5)
    with app.db.connect() as conn:
        unsent = conn.scalar(select(func.count()).select_from(tb.outbox))

    text = avrr("status")

    assert text.code == 1, text.err
    lines = text.out.splitlines()
    assert lines[0].endswith(": 4 problem(s) need a person")
    assert lines[1:5] == [
        "  ! no worker online",
        "  ! outbox: oldest unsent event 40d old (limit 1m): is the relay running?",
        "  ! 1 dead letter(s) open: avrr ops dead-letters",
        "  ! 1 timer(s) overdue: is beat running?",
    ]
    assert "workers       0 online" in lines
    assert f"outbox        {unsent} unsent, oldest 40d" in lines
    assert "dead letters  1 open" in lines
    assert "timers        1 due, 1 overdue (more than 5m past due)" in lines
    assert "stuck cases   1: avrr ops stuck" in lines
    table = lines[lines.index("stuck cases   1: avrr ops stuck") + 2 :]
    assert [row.split() for row in table] == [
        ["cases", "by", "state", "tallinn", "total"],
        ["inquiry", "2", "2"],
        ["handover_pending", "1", "1"],
        ["total", "3", "3"],
    ]

    doc = avrr("status", "--json")
    assert doc.code == 1
    status = doc.json()
    assert isinstance(status, dict)
    assert abs(datetime.fromisoformat(status["at"]) - datetime.now(UTC)) < timedelta(minutes=1)
    assert status["healthy"] is False and status["problems"] == [line[4:] for line in lines[1:5]]
    assert status["workers"] == [] and status["workers_note"] is None
    assert (status["outbox_backlog"], status["outbox_max_age_s"]) == (unsent, 60.0)
    assert 40 * 86400 <= status["outbox_oldest_age_s"] < 40 * 86400 + 120
    assert (status["dead_letters_open"], status["timers_due"], status["timers_overdue"]) == (1, 1, 1)
    assert (status["jobs_running"], status["stuck_cases"]) == (0, 1)
    assert status["cases_by_state"] == [
        {"state": "handover_pending", "office": "tallinn", "count": 1},
        {"state": "inquiry", "office": "tallinn", "count": 2},
    ]


def test_status_options_and_a_broker_that_does_not_answer(app: App, clock: FixedClock, avrr: Avrr) -> None:
    register(app)  # its event has waited an hour for the relay
    started = time.monotonic()
    down = avrr("status", AVRR_BROKER_URL=f"redis://127.0.0.1:{free_port()}/0")
    assert time.monotonic() - started < 15  # said so, rather than retrying for ever
    assert down.code == 1
    assert "  ! broker unreachable (OperationalError: Error 111 connecting to" in down.out
    assert "Traceback" not in down.out + down.err

    quiet = avrr("status", "--no-workers", "--max-outbox-age", "7200", "--json")
    assert quiet.code == 0, quiet.out
    status = quiet.json()
    assert isinstance(status, dict)
    assert (status["healthy"], status["problems"], status["workers"]) == (True, [], None)
    assert status["workers_note"] == "not asked (--no-workers)"
    text = avrr("status", "--no-workers", "--max-outbox-age", "7200")
    assert text.code == 0 and text.out.splitlines()[0].endswith(": healthy")
    assert "workers       not asked (--no-workers)" in text.out.splitlines()

    lagging = avrr("status", "--no-workers", "--max-outbox-age", "1800")
    assert lagging.code == 1
    assert "  ! outbox: oldest unsent event 1h old (limit 30m): is the relay running?" in lagging.out
    mark_all_sent(app)
    assert avrr("status", "--no-workers", "--max-outbox-age", "1800").code == 0


@pytest.mark.postgres
def test_status_with_a_worker_online_is_healthy_and_shows_it(
    pg_app: App, redis_server: RedisServer, tmp_path: Path
) -> None:
    url = pg_app.db.url.render_as_string(hide_password=False)
    avrr = Avrr({"AVRR_DATABASE_URL": url, "AVRR_BROKER_URL": redis_server.url()})
    register(pg_app)
    mark_all_sent(pg_app)
    worker = start_worker(url, redis_server.url(), tmp_path / "worker.log", concurrency=2)
    try:

        def healthy() -> Run | None:
            run = avrr("status", "--json")
            return run if run.code == 0 else None

        found = wait_for(healthy, timeout=60, what="a healthy status with the worker online")
        text = avrr("status")
    finally:
        stop(worker)
    assert found is not None
    status = found.json()
    (online,) = status["workers"]
    assert online["name"].startswith("test-") and online["queues"] == ["avrr"]
    assert (online["pool"], online["concurrency"], len(online["pids"])) == ("prefork", 2, 2)
    assert text.code == 0, text.out
    lines = text.out.splitlines()
    assert lines[0].endswith(": healthy") and lines[1] == ""
    assert lines[2] == "workers       1 online"
    assert lines[3].startswith(f"              {online['name']}  prefork x2  queues avrr  0 running")
    assert "outbox        0 unsent" in lines


# -- stuck --------------------------------------------------------------------------------------


def test_stuck_lists_cases_idle_past_their_state_limit_oldest_first(
    app: App, clock: FixedClock, avrr: Avrr
) -> None:
    now = clock.now() + timedelta(hours=1)
    clock.current = now - 40 * DAY
    oldest = register(app).case_id
    clock.current = now - 20 * DAY
    submitted = advance_to(app, "application_submitted")
    clock.current = now - DAY
    register(app)  # a day in inquiry: not stuck

    text = avrr("stuck")
    assert text.code == 0, text.err
    assert [line.split() for line in text.out.splitlines()] == [
        ["CASE", "STATE", "OWNER", "IDLE", "FOR", "ALLOWED"],
        [oldest, "inquiry", "tallinn", "40d", "30d"],
        [submitted, "application_submitted", "tallinn", "20d", "14d"],
    ]

    doc = avrr("stuck", "--json")
    cases = doc.json()
    assert isinstance(cases, list) and doc.code == 0
    assert [(c["case_id"], c["state"], c["owner_office"], c["allowed_s"]) for c in cases] == [
        (oldest, "inquiry", "tallinn", 30 * 86400.0),
        (submitted, "application_submitted", "tallinn", 14 * 86400.0),
    ]
    assert [datetime.fromisoformat(c["updated_at"]) for c in cases] == [now - 40 * DAY, now - 20 * DAY]
    assert 40 * 86400 <= cases[0]["idle_s"] < 40 * 86400 + 120

    only = avrr("stuck", "--state", "application_submitted", "--json").json()
    assert [c["case_id"] for c in only] == [submitted]
    first = avrr("stuck", "--limit", "1")
    assert first.out.splitlines()[1].split()[0] == oldest
    assert first.out.splitlines()[-1] == "(the first 1; --limit for more)"
    assert avrr("stuck", "--state", "closed").out == "no stuck cases in closed\n"
    wrong = avrr("stuck", "--state", "sideways")
    assert wrong.code == 2 and wrong.err.startswith("error: no state 'sideways'; states: inquiry,")


# -- dead letters -------------------------------------------------------------------------------


def test_dead_letters_show_age_case_effect_attempts_and_error(
    app: App, clock: FixedClock, avrr: Avrr
) -> None:
    assert avrr("dead-letters").out == "no dead letters\n"
    assert avrr("dead-letters", "--json").json() == []
    case_id = advance_to(app, "return_approved")
    first, second = jobs_of(app, case_id)[:2]
    now = datetime.now(UTC)
    spent = dead_letter(
        app, first, "TransientDeliveryError: SMTP connection failed", now - timedelta(hours=2), 5
    )
    refused = dead_letter(app, second, "UnknownEffect: not in this version", now - timedelta(minutes=3), 0)

    text = avrr("dead-letters")
    assert text.code == 0
    lines = text.out.splitlines()
    assert lines[0].split() == ["ID", "AGE", "CASE", "EFFECT", "ATTEMPTS"]
    # The age is its largest unit and the next; the seconds the command took may show.
    assert re.fullmatch(rf" +{spent}  +2h( 1m)?  {case_id}  {first.effect} +5", lines[1]), lines[1]
    assert lines[2] == "        TransientDeliveryError: SMTP connection failed"
    assert re.fullmatch(rf" +{refused}  +3m( \d+s)?  {case_id}  {second.effect} +0", lines[3]), lines[3]
    assert lines[4] == "        UnknownEffect: not in this version"
    assert lines[5:] == ["2 open; replay once the fault is fixed: avrr ops replay ID... | --all"]

    letters = avrr("dead-letters", "--json").json()
    assert isinstance(letters, list)
    assert [(d["id"], d["case_id"], d["effect"], d["attempts"], d["error"]) for d in letters] == [
        (spent, case_id, first.effect, 5, "TransientDeliveryError: SMTP connection failed"),
        (refused, case_id, second.effect, 0, "UnknownEffect: not in this version"),
    ]
    assert datetime.fromisoformat(letters[0]["dead_at"]) == now - timedelta(hours=2)
    assert 7200 <= letters[0]["age_s"] < 7200 + 120
    # Cut at its limit, the JSON list stays a list and says so on stderr.
    first_only = avrr("dead-letters", "--json", "--limit", "1")
    assert [d["id"] for d in first_only.json()] == [spent]
    assert "the first 1 only" in first_only.err
    assert "only" not in avrr("dead-letters", "--json", "--limit", "3").err


# -- replay -------------------------------------------------------------------------------------


def test_replay_all_queues_each_job_and_closes_its_letter_with_a_progress_bar(
    app: App, clock: FixedClock, avrr: Avrr, redis_server: RedisServer
) -> None:
    case_id = advance_to(app, "return_approved")
    jobs = jobs_of(app, case_id)[:3]
    ids = [
        dead_letter(app, job, f"TransientDeliveryError: attempt {n}", clock.now())
        for n, job in enumerate(jobs)
    ]
    assert queued(redis_server) == []

    run = avrr("replay", "--all", tty=True)

    assert run.code == 0, run.err
    assert run.out.splitlines() == [
        "replayed 3 job(s)",
        *(f"  {i:>6}  {case_id}  {job.effect}" for i, job in zip(ids, jobs, strict=True)),
    ]
    # The bar, drawn on the terminal, advances once per letter.
    assert all("replaying  [" in run.err and f"{n}/3" in run.err for n in range(4)), run.err
    assert queued(redis_server) == args(jobs)
    assert open_letters(app) == []
    with app.db.connect() as conn:
        statuses = conn.execute(
            select(tb.jobs.c.status, tb.jobs.c.attempts).where(
                tb.jobs.c.event_id.in_([j.event_id for j in jobs])
            )
        ).all()
    assert sorted(statuses) == [("pending", 0)] * 3  # a fresh attempt budget each
    assert avrr("dead-letters").out == "no dead letters\n"
    again = avrr("replay", "--all")
    assert (again.code, again.out) == (0, "replayed 0 job(s)\n")
    assert len(queued(redis_server)) == 3


def test_replay_by_id_reports_unknown_and_already_replayed_ids(
    app: App, clock: FixedClock, avrr: Avrr, redis_server: RedisServer
) -> None:
    case_id = advance_to(app, "return_approved")
    first, second = jobs_of(app, case_id)[:2]
    one = dead_letter(app, first, "TransientDeliveryError: SMTP connection failed", clock.now())
    two = dead_letter(app, second, "TransientDeliveryError: SMTP connection failed", clock.now())

    run = avrr("replay", str(one), "999999")
    assert run.code == 1
    assert run.out == f"replayed 1 job(s)\n  {one:>6}  {case_id}  {first.effect}\n"
    # Off a terminal the bar only names itself, once.
    assert run.err == "replaying\nerror: dead letter 999999: no such dead letter\n"
    assert queued(redis_server) == args([first])
    assert open_letters(app) == [two]

    again = avrr("replay", str(one), "--json")
    assert again.code == 1
    doc = again.json()
    assert isinstance(doc, dict) and doc["replayed"] == [] and doc["error"] is None
    ((refusal),) = doc["not_replayed"]
    assert refusal["id"] == one and refusal["reason"].startswith("already replayed at ")
    assert again.err == f"error: dead letter {one}: {refusal['reason']}\n"  # no progress bar

    last = avrr("replay", str(two), "--json", tty=True)
    assert last.code == 0 and last.err == ""
    assert last.json() == {
        "replayed": [
            {
                "dead_letter_id": two,
                "event_id": second.event_id,
                "event_type": second.event_type,
                "case_id": case_id,
                "effect": second.effect,
            }
        ],
        "not_replayed": [],
        "error": None,
    }
    assert queued(redis_server) == args([first, second])
    assert open_letters(app) == []

    for wrong in ((), (str(two), "--all")):
        usage = avrr("replay", *wrong)
        assert (usage.code, usage.err) == (2, "error: name dead letter ids, or --all\n")


def test_a_broker_down_leaves_every_letter_open(app: App, clock: FixedClock, avrr: Avrr) -> None:
    case_id = advance_to(app, "return_approved")
    ids = [
        dead_letter(app, job, "TransientDeliveryError: x", clock.now()) for job in jobs_of(app, case_id)[:2]
    ]
    started = time.monotonic()
    run = avrr("replay", "--all", AVRR_BROKER_URL=f"redis://127.0.0.1:{free_port()}/0")
    assert time.monotonic() - started < 20
    assert run.code == 2
    assert run.out == "replayed 0 job(s)\n"
    assert run.err.startswith("replaying\nerror: broker: OperationalError: Error 111 connecting to")
    assert run.err.endswith(" (stopped there: 2 dead letter(s) left open)\n")
    assert open_letters(app) == ids


def test_a_broker_that_fails_midway_leaves_the_rest_open(
    app: App, clock: FixedClock, avrr: Avrr, redis_server: RedisServer
) -> None:
    """Redis refuses writes (out of memory) once some messages are in: those letters are closed,
    each with its message on the queue, and every other letter stays open, with no message."""
    total = 400
    jobs: list[Job] = []
    while len(jobs) < total:
        jobs += jobs_of(app, advance_to(app, "return_approved"))
    jobs = jobs[:total]
    for job in jobs:
        dead_letter(app, job, "TransientDeliveryError: x", clock.now())
    with redis_server.client() as client:

        def refuse_writes_once_some_are_in() -> None:
            deadline = time.monotonic() + 60
            while client.llen("avrr") < 10 and time.monotonic() < deadline:
                time.sleep(0.001)
            client.config_set("maxmemory", 1)  # noeviction: every write is refused from now on

        watcher = threading.Thread(target=refuse_writes_once_some_are_in)
        watcher.start()
        run = avrr("replay", "--all")
        watcher.join()
        client.config_set("maxmemory", 0)
    on_queue = queued(redis_server)

    assert run.code == 2
    replayed = int(run.out.splitlines()[0].split()[1])
    assert 10 <= replayed < total, replayed
    assert len(run.out.splitlines()) == 1 + replayed
    assert on_queue == args(jobs[:replayed])  # oldest first, one message each
    with app.db.connect() as conn:
        open_events = list(conn.scalars(select(dl.event_id).where(dl.replayed_at.is_(None)).order_by(dl.id)))
    assert open_events == [j.event_id for j in jobs[replayed:]]
    assert "error: broker: " in run.err and "maxmemory" in run.err
    assert run.err.endswith(f" (stopped there: {total - replayed} dead letter(s) left open)\n")


# -- no database ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command", [("status", "--no-workers"), ("stuck",), ("dead-letters",), ("replay", "--all")]
)
def test_without_a_database_each_command_says_so_in_one_line_and_exits_2(
    command: tuple[str, ...], tmp_path: Path
) -> None:
    down = Avrr({"AVRR_DATABASE_URL": f"postgresql+psycopg://postgres:secret@127.0.0.1:{free_port()}/avrr"})
    run = down(*command)
    assert run.code == 2 and run.out == ""
    assert (
        run.err.startswith("error: database postgresql+psycopg://postgres:***@127.0.0.1:")
        and run.err.count("\n") == 1
    )
    assert "Connection refused" in run.err and "secret" not in run.err

    empty = Avrr({"AVRR_DATABASE_URL": f"sqlite:///{tmp_path / 'empty.sqlite3'}"})(*command)
    assert empty.code == 2 and empty.err.count("\n") == 1
    assert "no such table" in empty.err and empty.err.endswith("(is the schema migrated? avrr db upgrade)\n")
