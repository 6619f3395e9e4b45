"""Health: liveness (the process answers) and readiness (it can do its work).

Both are unauthenticated by design, so a load balancer or an orchestrator (docker-compose's
health checks, through `avrr serve --check`) can ask them, and they say nothing about cases.
Readiness checks that the database answers, that the broker takes a connection, and that the
relay keeps up: the oldest committed event not yet handed to the broker is younger than
``AVRR_READY_MAX_OUTBOX_AGE_SECONDS``. A failed check names the error's class, never its text.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from kombu.connection import Connection
from pydantic import BaseModel

from config.celery import celery_config
from workflow.adapters.ops_views import OpsViews
from workflow.api.context import engine

router = APIRouter(prefix="/health", tags=["health"])
NO_AUTH: dict[str, Any] = {"security": []}
BROKER_TIMEOUT = 2.0  # seconds to connect: a health check must answer while the broker is away


class Live(BaseModel):
    status: str


class Ready(BaseModel):
    status: str
    checks: dict[str, str]  # database, broker, relay: "ok" or why not


@router.get(
    "/live",
    summary="Liveness: the process answers (no authentication, no database)",
    response_model=Live,
    openapi_extra=NO_AUTH,
)
async def live() -> Live:
    return Live(status="ok")


def _failed(exc: Exception) -> str:
    return f"failed: {type(exc).__name__}"


def _database_and_relay(request: Request) -> dict[str, str]:
    state = engine(request)
    try:
        _, oldest = OpsViews(state.app.db).outbox_lag(state.app.clock.now())
    except Exception as exc:  # any failure means not ready; its class only, never its message
        return {"database": _failed(exc), "relay": "unknown: no database"}
    limit = state.settings.ready_max_outbox_age_seconds
    if oldest is not None and oldest > limit:
        return {
            "database": "ok",
            "relay": f"lagging: oldest unsent event {oldest:.0f} s old (limit {limit:.0f} s)",
        }
    return {"database": "ok", "relay": "ok"}


def _broker(request: Request) -> str:
    config = celery_config(engine(request).settings.broker_url)
    try:
        with Connection(  # type: ignore[no-untyped-call]
            config["broker_url"],
            transport_options=config["broker_transport_options"],
            connect_timeout=BROKER_TIMEOUT,
        ) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=BROKER_TIMEOUT)
            if str(config["broker_url"]).startswith("redis"):  # redis:// and rediss://
                conn.default_channel.client.ping()  # a connection alone may not reach the server
    except Exception as exc:
        return _failed(exc)
    return "ok"


@router.get(
    "/ready",
    summary="Readiness: the database answers, the broker takes a connection, the relay keeps up "
    "(no authentication)",
    response_model=Ready,
    responses={503: {"model": Ready, "description": "Not ready: a check failed"}},
    openapi_extra=NO_AUTH,
)
async def ready(request: Request) -> Any:
    checks = await run_in_threadpool(_database_and_relay, request)
    checks["broker"] = await run_in_threadpool(_broker, request)
    if all(result == "ok" for result in checks.values()):
        return Ready(status="ok", checks=checks)
    return JSONResponse(Ready(status="unavailable", checks=checks).model_dump(), status_code=503)
