"""`avrr ops`: the dead letters, and replaying them once the fault is fixed."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated

import typer

from workflow.adapters.clock import SystemClock
from workflow.adapters.jobs import SqlDeadLetters
from workflow.bootstrap import bootstrap

ops_app = typer.Typer(help="Operations: dead letters and replay.", no_args_is_help=True)
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]


@ops_app.command("dead-letters")
def dead_letters(as_json: JsonOpt = False, limit: int = 1000) -> None:
    """Jobs that spent their attempts, with their error, oldest first."""
    letters = SqlDeadLetters(bootstrap().db).open(limit)
    if as_json:
        typer.echo(
            json.dumps([asdict(letter) | {"dead_at": letter.dead_at.isoformat()} for letter in letters])
        )
        return
    if not letters:
        typer.echo("no dead letters")
        return
    for d in letters:
        typer.echo(f"{d.id:>6}  {d.dead_at:%Y-%m-%d %H:%M}  {d.case_id}  {d.effect}  attempts={d.attempts}")
        typer.echo(f"        {d.error}")


@ops_app.command("replay")
def replay(
    ids: Annotated[list[int] | None, typer.Argument(help="dead letter ids (see dead-letters)")] = None,
    replay_all: Annotated[bool, typer.Option("--all", help="replay every open dead letter")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Re-queue dead letters with a fresh attempt budget; an effect that already happened is
    not repeated (the job's key is recognised)."""
    if not ids and not replay_all:
        typer.echo("error: name dead letter ids, or --all", err=True)
        raise typer.Exit(2)
    from workers.app import app as celery
    from workers.jobs import send_job

    with celery.producer_or_acquire() as producer:
        jobs = SqlDeadLetters(bootstrap().db).replay(
            None if replay_all else ids, SystemClock().now(), lambda job: send_job(celery, job, producer)
        )
    if as_json:
        typer.echo(json.dumps([asdict(job) for job in jobs]))
    else:
        typer.echo(f"replayed {len(jobs)} job(s)")
        for job in jobs:
            typer.echo(f"  {job.case_id}  {job.effect}")
