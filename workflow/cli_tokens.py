"""`avrr token`: API tokens for people and machine clients (shown once, stored hashed)."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import timedelta
from typing import Annotated

import typer

from config.settings import get_settings
from workflow.adapters.clock import SystemClock
from workflow.adapters.tokens import SqlTokens
from workflow.bootstrap import bootstrap
from workflow.domain.actors import Role

token_app = typer.Typer(help="API tokens: create (shown once), list, revoke.", no_args_is_help=True)


@token_app.command("create")
def create(
    actor: Annotated[str, typer.Option("--actor", help="the person or client the token acts as")],
    role: Annotated[list[Role], typer.Option("--role", help="a role (repeatable)")],
    office: Annotated[str | None, typer.Option("--office", help="the office it acts for")] = None,
    name: Annotated[str, typer.Option(help="a label, e.g. the client's name")] = "",
    days: Annotated[
        int | None, typer.Option(help="valid for this many days (default AVRR_API_TOKEN_DAYS)")
    ] = None,
) -> None:
    """Create a token bound to an office and roles; it is printed once and never stored."""
    if office is None and set(role) != {Role.SYSTEM}:
        typer.echo("error: a token without --office may only hold the system role", err=True)
        raise typer.Exit(2)
    ttl = timedelta(days=days or get_settings().api_token_days)
    token, info = SqlTokens(bootstrap().db).create(
        name or actor, actor, office, role, ttl, SystemClock().now()
    )
    typer.echo(token)
    typer.echo(
        f"id {info.id}, prefix {info.prefix}, expires {info.expires_at:%Y-%m-%d}: "
        "store it now, it is not shown again",
        err=True,
    )


@token_app.command("list")
def list_tokens(
    include_revoked: Annotated[bool, typer.Option("--all", help="include revoked tokens")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Tokens (never their secret): id, prefix, actor, office, roles, expiry."""
    tokens = SqlTokens(bootstrap().db).list(include_revoked)
    if as_json:
        typer.echo(json.dumps([asdict(t) for t in tokens], default=str))
        return
    for t in tokens:
        state = "revoked" if t.revoked_at else f"expires {t.expires_at:%Y-%m-%d}"
        typer.echo(
            f"{t.prefix}  {t.actor_id:<24} {t.office or '-':<10} {','.join(t.roles):<32} {state}  {t.name}"
        )


@token_app.command("revoke")
def revoke(token_id: Annotated[str, typer.Argument(help="the token's id or prefix")]) -> None:
    """Revoke a token at once."""
    if not SqlTokens(bootstrap().db).revoke(token_id, SystemClock().now()):
        typer.echo(f"error: no active token {token_id}", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {token_id}")
