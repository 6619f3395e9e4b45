"""`avrr ops`: the one-screen status, stuck cases, dead letters, and replaying them once the fault
is fixed. Each command prints for a terminal, or one JSON document with `--json` (times in ISO 8601).

Exit codes, for scripts and cron: 0 all is well; 1 something needs a person (`status`: the problems
it lists; `replay`: an id that names no open dead letter); 2 the command could not do its work (no
database, the broker failed during a replay, a bad argument).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime
from typing import Annotated

import typer
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from config.settings import get_settings
from workflow.adapters.clock import SystemClock
from workflow.adapters.db import make_engine
from workflow.adapters.jobs import SqlDeadLetters
from workflow.adapters.ops_views import OVERDUE_GRACE, OpsViews
from workflow.cli_ops_screen import Workers, problems, screen, span
from workflow.domain.lifecycle import LIFECYCLE
from workflow.service_layer.effects import Job

NEEDS_A_PERSON = 1
FAILED = 2

ops_app = typer.Typer(help="Operations: status, stuck cases, dead letters and replay.", no_args_is_help=True)
JsonOpt = Annotated[bool, typer.Option("--json", help="one JSON document instead of text")]


# -- plumbing ----------------------------------------------------------------------------------


def _jsonable(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")


def _print_json(data: object) -> None:
    typer.echo(json.dumps(data, default=_jsonable))


def _first_line(exc: BaseException) -> str:
    text = str(exc.orig if isinstance(exc, DBAPIError) else exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


@contextmanager
def _database() -> Iterator[Engine]:
    """The configured database. Unreachable (or never migrated): one line on stderr and exit 2,
    not a traceback."""
    # libpq waits for an unanswering host as long as TCP does; a status check must not.
    os.environ.setdefault("PGCONNECT_TIMEOUT", "5")
    url = get_settings().database_url
    db = make_engine(url, pool_size=1)
    try:
        yield db
    except SQLAlchemyError as exc:
        line = _first_line(exc)
        if "no such table" in line or ("relation" in line and "does not exist" in line):
            line += " (is the schema migrated? avrr db upgrade)"
        typer.echo(f"error: database {db.url.render_as_string()}: {line}", err=True)
        raise typer.Exit(FAILED) from None
    finally:
        db.dispose()


# -- status ------------------------------------------------------------------------------------


def _workers(ask: bool, timeout: float) -> Workers:
    if not ask:
        return Workers(asked=False, online=None, note="not asked (--no-workers)")
    from workers.app import app as celery
    from workflow.adapters.worker_watch import WorkerWatch

    try:
        return Workers(asked=True, online=WorkerWatch(celery, timeout).workers())
    except Exception as exc:  # whatever the transport raises: the broker cannot be reached
        return Workers(asked=True, online=None, note=f"broker unreachable ({_first_line(exc)})")


@ops_app.command("status")
def status(
    as_json: JsonOpt = False,
    no_workers: Annotated[
        bool, typer.Option("--no-workers", help="do not ask the workers over the broker")
    ] = False,
    max_outbox_age: Annotated[
        float | None,
        typer.Option(
            help="seconds an unsent event may wait before it needs a person "
            "(default AVRR_READY_MAX_OUTBOX_AGE_SECONDS)"
        ),
    ] = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the workers' answers")] = 1.0,
) -> None:
    """One screen: workers, outbox, jobs, dead letters, timers, stuck cases, cases by state.
    Exits 1 when something needs a person (listed first), 0 when nothing does."""
    limit = get_settings().ready_max_outbox_age_seconds if max_outbox_age is None else max_outbox_age
    with _database() as db:
        found = OpsViews(db).status(SystemClock().now())
    workers = _workers(not no_workers, timeout)
    needs = problems(found, workers, limit)
    if as_json:
        _print_json(
            asdict(found)
            | {
                "healthy": not needs,
                "problems": needs,
                "outbox_max_age_s": limit,
                "overdue_grace_s": OVERDUE_GRACE.total_seconds(),
                "workers": None if workers.online is None else [asdict(w) for w in workers.online],
                "workers_note": workers.note,
            }
        )
    else:
        typer.echo(screen(found, workers, needs))
    raise typer.Exit(NEEDS_A_PERSON if needs else 0)


def _note_limit(shown: int, limit: int) -> None:
    """A JSON list cut at its limit says so on stderr (the list itself stays a plain list)."""
    if shown == limit:
        typer.echo(f"note: the first {limit} only; there may be more (--limit for more)", err=True)


# -- stuck cases -------------------------------------------------------------------------------


@ops_app.command("stuck")
def stuck(
    limit: Annotated[int, typer.Option(help="at most this many")] = 50,
    state: Annotated[str | None, typer.Option(help="only cases in this state")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Cases idle longer than their state allows (the lifecycle table's stuck_after), oldest first."""
    if state is not None and state not in LIFECYCLE.by_state:
        typer.echo(f"error: no state {state!r}; states: {', '.join(LIFECYCLE.by_state)}", err=True)
        raise typer.Exit(FAILED)
    with _database() as db:
        cases = OpsViews(db).stuck_cases(SystemClock().now(), limit, state)
    if as_json:
        _print_json([asdict(case) for case in cases])
        _note_limit(len(cases), limit)
        return
    if not cases:
        typer.echo("no stuck cases" + (f" in {state}" if state else ""))
        return
    typer.echo(f"{'CASE':<36}  {'STATE':<26}  {'OWNER':<10}  {'IDLE FOR':>8}  {'ALLOWED':>8}")
    for case in cases:
        typer.echo(
            f"{case.case_id:<36}  {case.state:<26}  {case.owner_office:<10}  "
            f"{span(case.idle_s):>8}  {span(case.allowed_s):>8}"
        )
    if len(cases) == limit:
        typer.echo(f"(the first {limit}; --limit for more)")


# -- dead letters ------------------------------------------------------------------------------


@ops_app.command("dead-letters")
def dead_letters(
    as_json: JsonOpt = False, limit: Annotated[int, typer.Option(help="at most this many")] = 1000
) -> None:
    """Jobs that spent their attempts, with their error, oldest first."""
    with _database() as db:
        letters = SqlDeadLetters(db).open(limit)
    now = SystemClock().now()
    if as_json:
        _print_json([asdict(d) | {"age_s": max(0.0, (now - d.dead_at).total_seconds())} for d in letters])
        _note_limit(len(letters), limit)
        return
    if not letters:
        typer.echo("no dead letters")
        return
    typer.echo(f"{'ID':>6}  {'AGE':>7}  {'CASE':<36}  {'EFFECT':<40}  ATTEMPTS")
    for d in letters:
        age = span(max(0.0, (now - d.dead_at).total_seconds()))
        typer.echo(f"{d.id:>6}  {age:>7}  {d.case_id:<36}  {d.effect:<40}  {d.attempts:>8}")
        for line in d.error.splitlines() or [""]:
            typer.echo(f"{'':>8}{line}")
    shown = f"the first {limit}" if len(letters) == limit else f"{len(letters)} open"
    typer.echo(f"{shown}; replay once the fault is fixed: avrr ops replay ID... | --all")


# -- replay ------------------------------------------------------------------------------------


@ops_app.command("replay")
def replay(
    ids: Annotated[list[int] | None, typer.Argument(help="dead letter ids (see dead-letters)")] = None,
    replay_all: Annotated[bool, typer.Option("--all", help="replay every open dead letter")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Re-queue dead letters with a fresh attempt budget, each in its own transaction; an effect
    that already happened is not repeated (the job's key is recognised). Exits 1 when an id names
    no open dead letter, 2 when the broker fails (the letters not yet replayed stay open)."""
    if bool(ids) == replay_all:
        typer.echo("error: name dead letter ids, or --all", err=True)
        raise typer.Exit(FAILED)
    refused: dict[int, str] = {}  # id -> why it was not replayed
    with _database() as db:
        letters = SqlDeadLetters(db)
        if replay_all:
            chosen = letters.open_ids()
        else:
            asked = list(dict.fromkeys(ids or []))
            found = letters.replayed_at(asked)
            for i in asked:
                if i not in found:
                    refused[i] = "no such dead letter"
                elif (at := found[i]) is not None:
                    refused[i] = f"already replayed at {at:%Y-%m-%d %H:%M:%S %Z}"
            chosen = [i for i in asked if i not in refused]
        replayed, left, error = _replay_each(letters, chosen, refused, show_progress=not as_json)
    _report_replay(replayed, refused, left, error, as_json)
    raise typer.Exit(FAILED if error else NEEDS_A_PERSON if refused else 0)


def _replay_each(
    letters: SqlDeadLetters, chosen: list[int], refused: dict[int, str], show_progress: bool
) -> tuple[list[tuple[int, Job]], list[int], str | None]:
    """Replays the letters one by one (a transaction each), so the progress shown is committed.
    The first broker failure stops there: it returns what was replayed, the ids left open, and
    the error."""
    from workers.app import app as celery
    from workers.jobs import send_job

    replayed: list[tuple[int, Job]] = []
    if not chosen:
        return replayed, [], None
    done = 0
    try:
        with (
            celery.producer_or_acquire() as producer,
            typer.progressbar(
                chosen, label="replaying", show_pos=True, file=sys.stderr, hidden=not show_progress
            ) as progress,
        ):
            for letter_id in progress:
                jobs = letters.replay(
                    [letter_id], SystemClock().now(), lambda job: send_job(celery, job, producer)
                )
                if jobs:
                    replayed.append((letter_id, jobs[0]))
                else:  # someone replayed it since we looked
                    refused[letter_id] = "already replayed"
                done += 1
    except SQLAlchemyError:
        raise  # the database's failure, reported by _database
    except Exception as exc:  # the transport's error, whichever it is: the broker failed
        return replayed, chosen[done:], f"broker: {_first_line(exc)}"
    return replayed, [], None


def _report_replay(
    replayed: list[tuple[int, Job]],
    refused: dict[int, str],
    left: list[int],
    error: str | None,
    as_json: bool,
) -> None:
    jobs = [
        {
            "dead_letter_id": letter_id,
            "event_id": job.event_id,
            "event_type": job.event_type,
            "case_id": job.case_id,
            "effect": job.effect,
        }
        for letter_id, job in replayed
    ]
    if as_json:
        not_replayed = [{"id": i, "reason": why} for i, why in refused.items()]
        not_replayed += [{"id": i, "reason": "left open: the broker failed"} for i in left]
        _print_json({"replayed": jobs, "not_replayed": not_replayed, "error": error})
    else:
        typer.echo(f"replayed {len(jobs)} job(s)")
        for job in jobs:
            typer.echo(f"  {job['dead_letter_id']:>6}  {job['case_id']}  {job['effect']}")
    for i, why in refused.items():
        typer.echo(f"error: dead letter {i}: {why}", err=True)
    if error:
        typer.echo(f"error: {error} (stopped there: {len(left)} dead letter(s) left open)", err=True)
