"""What every request handler needs: the engine, the caller, the request id, the access log."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Annotated

import structlog
from fastapi import Depends, Header, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from config.settings import Settings
from workflow.adapters.access_log import SqlAccessLog
from workflow.api.problems import ApiProblem
from workflow.api.security import Authenticator
from workflow.bootstrap import App
from workflow.domain.actors import Actor

log = structlog.get_logger(__name__)
REQUEST_ID_HEADER = "X-Request-ID"
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


@dataclass
class Engine:
    """Built once per process by ``create_app``; handlers reach it through ``engine(request)``."""

    app: App
    settings: Settings
    auth: Authenticator
    access: SqlAccessLog


def engine(request: Request) -> Engine:
    return request.app.state.engine  # type: ignore[no-any-return]


class RequestIdMiddleware:
    """Pure ASGI (cheaper than BaseHTTPMiddleware): takes a safe X-Request-ID or makes one,
    binds it to the log context and echoes it on the response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), "")
        request_id = given if _SAFE_ID.match(given) else str(uuid.uuid4())
        scope.setdefault("state", {})["request_id"] = request_id
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(message)

        await self.app(scope, receive, send_with_id)


def request_id(request: Request) -> str:
    return str(request.state.request_id)


def action(request: Request) -> str:
    """The route's template (``POST /cases/{case_id}``), not the path: no ids in the action."""
    route = request.scope.get("route")
    return f"{request.method} {getattr(route, 'path', request.url.path)}"[:64]


@dataclass(frozen=True)
class Call:
    """The authenticated caller of one request."""

    actor: Actor
    request_id: str
    engine: Engine

    def log_access(self, action: str, outcome: str, case_id: str | None = None) -> None:
        self.engine.access.record(
            self.engine.app.clock.now(),
            action,
            outcome,
            self.actor.id,
            self.actor.office,
            case_id,
            self.request_id,
        )


def call(
    request: Request,
    authorization: Annotated[str | None, Header(description="`Bearer <API token or OIDC JWT>`")] = None,
) -> Call:
    eng = engine(request)
    client = request.client.host if request.client else "unknown"
    try:
        actor = eng.auth.authenticate(authorization, client)
    except ApiProblem as refusal:  # missing or bad credentials, or rate limited
        # Logged here, as the handler does not (it has no actor to name): a rate limit is logged by
        # the handler. A failed write must not turn the 401 into a 500.
        if refusal.code == "unauthenticated":
            try:
                eng.access.record(
                    eng.app.clock.now(), action(request), refusal.code, request_id=request_id(request)
                )
            except Exception as exc:
                log.error("api.access_log_failed", outcome=refusal.code, error=type(exc).__name__)
        raise
    request.state.actor = actor  # for the access log of a refusal further on
    structlog.contextvars.bind_contextvars(actor_id=actor.id)
    return Call(actor, request_id(request), eng)


Caller = Annotated[Call, Depends(call)]
