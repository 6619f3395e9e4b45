"""The `avrr` command: database, cases, the lifecycle and the seed family's demo."""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path
from typing import Annotated, Any, NoReturn

import structlog
import typer
from pydantic import ValidationError

from config.logging import configure_logging
from config.settings import get_settings
from workflow.bootstrap import App, bootstrap
from workflow.cli_ops import ops_app
from workflow.cli_tokens import token_app
from workflow.domain import diagram
from workflow.domain.actors import Actor, Role
from workflow.domain.errors import ALL_ERRORS, DomainError, InvalidPayload
from workflow.domain.lifecycle import LIFECYCLE

app = typer.Typer(help="avrr-workflow: the AVRR case lifecycle engine.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
case_app = typer.Typer(help="Create, inspect and move cases.", no_args_is_help=True)
lifecycle_app = typer.Typer(help="The lifecycle definition.", no_args_is_help=True)
office_app = typer.Typer(help="Offices of the programme.", no_args_is_help=True)
for sub, name in ((db_app, "db"), (case_app, "case"), (lifecycle_app, "lifecycle"), (office_app, "office")):
    app.add_typer(sub, name=name)
app.add_typer(ops_app, name="ops")
app.add_typer(token_app, name="token")

# One exit code per domain error, so scripts can tell refusals apart (documented in README).
EXIT_CODES = {error: 10 + i for i, error in enumerate(ALL_ERRORS)}

_REQUEST_ID = f"cli-{uuid.uuid4()}"
ActorOpt = Annotated[str, typer.Option("--actor", help="id of the person or client firing")]
OfficeOpt = Annotated[str, typer.Option("--office", help="the actor's office code")]
RolesOpt = Annotated[list[Role], typer.Option("--role", help="the actor's role (repeatable)")]
PayloadOpt = Annotated[str, typer.Option("--payload", help="JSON object, or @file.json")]


@app.callback()
def _main() -> None:
    try:
        settings = get_settings()
    except ValidationError as exc:
        for error in exc.errors(include_url=False, include_input=False):
            typer.echo(f"error: settings: {error['msg'].removeprefix('Value error, ')}", err=True)
        raise typer.Exit(2) from None
    configure_logging(json=settings.json_logs, level=settings.log_level)
    structlog.contextvars.bind_contextvars(request_id=_REQUEST_ID)


def _app() -> App:
    return bootstrap()


def _fail(error: DomainError) -> NoReturn:
    typer.echo(f"error: {error.code}: {error.detail}", err=True)
    for key, value in error.extra().items():
        typer.echo(f"  {key}: {json.dumps(value, default=str)}", err=True)
    raise typer.Exit(EXIT_CODES.get(type(error), 1))


def _payload(raw: str) -> dict[str, Any]:
    text = Path(raw[1:]).read_text() if raw.startswith("@") else raw
    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError as exc:
        typer.echo(f"error: invalid_payload: not JSON ({exc.msg})", err=True)
        raise typer.Exit(EXIT_CODES[InvalidPayload]) from None
    return value  # type: ignore[no-any-return]


def _print(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Create or migrate the schema of the configured database."""
    from workflow.adapters.migrate import upgrade

    upgrade(get_settings().database_url, revision)
    typer.echo(f"database at {revision}")


@office_app.command("add")
def office_add(
    code: str,
    name: str,
    country: str,
    webhook_url: Annotated[str | None, typer.Option(help="another deployment's handover endpoint")] = None,
    email: Annotated[str | None, typer.Option(help="where staff notices for this office go")] = None,
) -> None:
    """Register an office (code, display name, ISO country)."""
    from workflow.adapters.views import ensure_office

    added = ensure_office(_app().db, code, name, country, webhook_url, email)
    typer.echo(f"office {code} {'added' if added else 'already present'}")


@case_app.command("create")
def case_create(
    actor: ActorOpt,
    office: OfficeOpt,
    payload: PayloadOpt,
    role: RolesOpt = [Role.CASEWORKER],  # noqa: B006 - typer reads, never mutates, it
    idempotency_key: str | None = None,
) -> None:
    """Register an inquiry with its household (payload: offices, language, members)."""
    try:
        result = _app().transitions.create_case(
            Actor(actor, office, frozenset(role)),
            _payload(payload),
            idempotency_key=idempotency_key,
            request_id=_REQUEST_ID,
        )
    except DomainError as error:
        _fail(error)
    _print(result.to_json())


@case_app.command("fire")
def case_fire(
    case_id: str,
    trigger: str,
    actor: ActorOpt,
    office: OfficeOpt,
    role: RolesOpt,
    payload: PayloadOpt = "{}",
    expected_version: int | None = None,
    idempotency_key: str | None = None,
) -> None:
    """Fire a trigger on a case."""
    try:
        result = _app().transitions.fire(
            case_id,
            trigger,
            Actor(actor, office, frozenset(role)),
            _payload(payload),
            expected_version=expected_version,
            idempotency_key=idempotency_key,
            request_id=_REQUEST_ID,
        )
    except DomainError as error:
        _fail(error)
    _print(result.to_json())


@case_app.command("show")
def case_show(case_id: str) -> None:
    """A case with its household (relationships and ages only), plan and timers."""
    try:
        _print(_app().views.case(case_id))
    except DomainError as error:
        _fail(error)


@case_app.command("history")
def case_history(case_id: str) -> None:
    """Every transition of a case, oldest first."""
    try:
        rows = _app().views.history(case_id)
    except DomainError as error:
        _fail(error)
    for row in rows:
        reason = f"  ({row['reason']})" if row["reason"] else ""
        typer.echo(
            f"v{row['version']:<3} {row['occurred_at'][:19]}  {row['trigger']:<26} "
            f"{row['from_state'] or '-'} -> {row['to_state']}  by {row['actor_id']}{reason}"
        )


@lifecycle_app.command("diagram")
def lifecycle_diagram() -> None:
    """The lifecycle as a Mermaid state diagram."""
    typer.echo(diagram.mermaid(LIFECYCLE), nl=False)


@lifecycle_app.command("table")
def lifecycle_table() -> None:
    """The lifecycle as a readable table."""
    typer.echo(diagram.table(LIFECYCLE), nl=False)


@app.command("demo")
def demo(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="also show the engine's log")] = False,
) -> None:
    """Run the seed family's story through the engine on the configured database."""
    import logging

    from workflow.adapters.migrate import upgrade

    if not verbose:  # the steps are printed below; the log would repeat each one
        logging.getLogger().setLevel(logging.WARNING)
    from workflow.adapters.views import ensure_office
    from workflow.demo import DESTINATION, ORIGIN, run_story

    upgrade(get_settings().database_url)
    engine = _app()
    for office in (ORIGIN, DESTINATION):
        ensure_office(engine.db, *office)
    try:
        for n, result in enumerate(run_story(engine.transitions, engine.views.case), start=1):
            typer.echo(
                f"{n:>2}. {result.trigger:<26} {result.from_state or '-':<26} -> "
                f"{result.to_state:<26} v{result.version}"
            )
    except DomainError as error:
        _fail(error)
    case = engine.views.case(result.case_id)
    typer.echo(
        f"\ncase {case['id']}: {case['state']} (outcome: {case['outcome']}), "
        f"owned by {case['owner_office']}, {len(case['members'])} household members"
    )
    for line in case["plan"]["lines"]:
        typer.echo(
            f"  {line['category']:<10} allocated {line['allocated']:>12}  "
            f"disbursed {line['disbursed']:>12}  left {line['remaining']:>12}"
        )
    typer.echo(f"  family's own contribution (not grant): {', '.join(case['contributions'])}")
    typer.echo(f"\nhistory: avrr case history {case['id']}")


from workflow.cli_processes import register  # noqa: E402 - after the commands above, in help order

register(app)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
