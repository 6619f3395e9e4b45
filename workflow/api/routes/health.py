"""Health: liveness (the process answers) and readiness (it can reach its database).

Both are unauthenticated by design, so a load balancer or an orchestrator can ask them, and they
say nothing about cases. Readiness checks the database only; the broker's check lands with the
operations issue.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import text

from workflow.api.context import engine

router = APIRouter(prefix="/health", tags=["health"])
NO_AUTH: dict[str, Any] = {"security": []}


class Live(BaseModel):
    status: str


class Ready(BaseModel):
    status: str
    checks: dict[str, str]


@router.get(
    "/live",
    summary="Liveness: the process answers (no authentication, no database)",
    response_model=Live,
    openapi_extra=NO_AUTH,
)
async def live() -> Live:
    return Live(status="ok")


def _database(request: Request) -> str:
    try:
        with engine(request).app.db.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # any failure means not ready; its class only, never its message
        return f"failed: {type(exc).__name__}"
    return "ok"


@router.get(
    "/ready",
    summary="Readiness: the database answers SELECT 1 (no authentication)",
    response_model=Ready,
    responses={503: {"model": Ready, "description": "Not ready: a check failed"}},
    openapi_extra=NO_AUTH,
)
async def ready(request: Request) -> Any:
    checks = {"database": await run_in_threadpool(_database, request)}
    if all(result == "ok" for result in checks.values()):
        return Ready(status="ok", checks=checks)
    return JSONResponse(Ready(status="unavailable", checks=checks).model_dump(), status_code=503)
