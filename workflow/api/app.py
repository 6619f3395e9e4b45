"""The FastAPI app: routes per resource, problem details for every refusal, request ids."""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from config.settings import Settings, get_settings
from workflow.adapters import metrics as prometheus
from workflow.adapters.access_log import SqlAccessLog
from workflow.adapters.ops_metrics import OpsCollector
from workflow.adapters.ops_views import OpsViews
from workflow.adapters.queries import plausible_id
from workflow.adapters.tokens import SqlTokens
from workflow.api.body_limit import BodyLimitMiddleware
from workflow.api.context import Engine, RequestIdMiddleware, action, engine, request_id
from workflow.api.problems import PAYLOAD_TOO_LARGE, PROBLEM_SCHEMA, PROBLEMS, ApiProblem, problem
from workflow.api.routes import (
    cases,
    events,
    grants,
    handover,
    health,
    lifecycle,
    listing,
    metrics,
    ops,
    ops_page,
    tasks,
)
from workflow.api.schemas import payload_schemas
from workflow.api.security import Authenticator
from workflow.bootstrap import App, bootstrap
from workflow.domain.errors import DomainError
from workflow.domain.lifecycle import LIFECYCLE

log = structlog.get_logger(__name__)

DESCRIPTION = """The AVRR case lifecycle engine over HTTP.

**Authentication**: every endpoint needs `Authorization: Bearer <token>`: an API token
(`avrr token create`) or, when configured, an OIDC/JWT bearer token. Missing or bad
credentials answer 401.

**Scope**: a caller sees its office's cases and the cases handed to or from it; any other case
id answers 404 (`unknown_case`), never 403, so ids cannot be probed.

**Errors** are RFC 9457 problem details (`application/problem+json`), one `type` per refusal:
""" + "\n".join(f"- `/problems/{code}`: {status} {title}" for code, (status, title) in PROBLEMS.items())


def create_app(app: App | None = None, settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = app or bootstrap(settings)
    api = FastAPI(title="avrr-workflow", version=LIFECYCLE.version, description=DESCRIPTION)
    api.state.engine = Engine(
        app, settings, Authenticator(settings, SqlTokens(app.db), app.clock), SqlAccessLog(app.db)
    )
    api.state.metrics = prometheus.registry(OpsCollector(OpsViews(app.db), app.clock))
    api.add_middleware(BodyLimitMiddleware)
    api.add_middleware(RequestIdMiddleware)  # added last, so outermost: the limit's refusals carry the id
    api.include_router(cases.router)
    api.include_router(listing.router)
    api.include_router(grants.router)
    api.include_router(tasks.router)
    api.include_router(events.router)
    api.include_router(lifecycle.router)
    api.include_router(health.router)
    api.include_router(handover.router)
    api.include_router(metrics.router)
    api.include_router(ops.router)
    api.include_router(ops_page.router)
    _handlers(api)
    api.openapi = lambda: _openapi(api)  # type: ignore[method-assign]
    return api


async def _refused(request: Request, code: str) -> None:
    """Every refusal goes to the access log (who, what, outcome), never its payload. The insert
    blocks, so it runs in the threadpool; if it fails the refusal is still answered as it was."""
    eng = engine(request)
    actor = getattr(request.state, "actor", None)
    case_id = request.path_params.get("case_id")
    try:
        await run_in_threadpool(
            eng.access.record,
            eng.app.clock.now(),
            action(request),
            code,
            actor.id if actor else None,
            actor.office if actor else None,
            case_id if case_id and plausible_id(case_id) else None,  # an implausible id names no case
            request_id(request),
        )
    except Exception as exc:  # the refusal is the answer; a lost log line must not turn it into a 500
        log.error("api.access_log_failed", outcome=code, error=type(exc).__name__)


def _problem(
    code: str,
    detail: str,
    request: Request,
    extra: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """A refusal's problem details, counted by its code in avrr_requests_refused_total."""
    prometheus.refused(code)
    return problem(code, detail, request.url.path, request_id(request), extra, headers)


def _handlers(api: FastAPI) -> None:
    @api.exception_handler(DomainError)
    async def domain_error(request: Request, error: DomainError) -> JSONResponse:
        await _refused(request, error.code)
        return _problem(error.code, error.detail, request, error.extra())

    @api.exception_handler(ApiProblem)
    async def api_problem(request: Request, error: ApiProblem) -> JSONResponse:
        # Bad credentials are logged where they were checked; a body too large is refused before
        # it is read, as an unknown route is, and logging it would let anyone fill the log.
        if error.code not in {"unauthenticated", PAYLOAD_TOO_LARGE}:
            await _refused(request, error.code)
        return _problem(error.code, error.detail, request, headers=error.headers)

    @api.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        await _refused(request, "invalid_payload")
        errors = [
            {"loc": ".".join(str(part) for part in e["loc"]), "msg": e["msg"], "type": e["type"]}
            for e in error.errors()
        ]
        return _problem("invalid_payload", "the request is invalid", request, {"errors": errors})

    @api.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "invalid_payload")
        return _problem(code, str(error.detail), request)

    @api.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.error("api.unexpected_error", error=type(error).__name__, path=request.url.path)
        prometheus.refused("internal_error")
        return problem(
            "internal_error",
            "the request failed; it is logged with its request id",
            None,
            request_id(request),
        )


def _openapi(api: FastAPI) -> dict[str, Any]:
    if api.openapi_schema:
        return api.openapi_schema
    schema = get_openapi(title=api.title, version=api.version, description=api.description, routes=api.routes)
    components = schema.setdefault("components", {})
    components.setdefault("schemas", {}).update(
        payload_schemas(tuple({t.payload for t in LIFECYCLE.transitions}))
    )
    components["schemas"]["Problem"] = PROBLEM_SCHEMA
    components["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "description": "API token or OIDC JWT"}
    }
    schema["security"] = [{"bearer": []}]
    api.openapi_schema = schema
    return schema
