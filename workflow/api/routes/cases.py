"""Cases: create, read (with version as ETag and the caller's triggers), fire, history."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response
from fastapi.concurrency import run_in_threadpool

from workflow.api.context import Call, Caller
from workflow.api.problems import ApiProblem, responses
from workflow.api.routes.grants import MONEY, limit_money
from workflow.api.schemas import body
from workflow.domain import payloads as p
from workflow.domain.errors import InvalidPayload
from workflow.domain.lifecycle import LIFECYCLE, Transition
from workflow.service_layer.transitions import REGISTER, FireResult

router = APIRouter(tags=["cases"])

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=200,
        description="Retry-safe key: the same key and request answer the first response again and fire once",
    ),
]
IfMatch = Annotated[
    str | None, Header(alias="If-Match", description='The case version you read, as its ETag: `"3"`')
]
READ = ("unauthenticated", "unknown_case", "rate_limited")
FIRE = (
    *READ,
    "unknown_trigger",
    "transition_not_allowed",
    "guard_failed",
    "budget_exceeded",
    "idempotency_key_reused",
    "version_conflict",
    "permission_denied",
    "invalid_payload",
    "precondition_required",
)


_VERSION = re.compile(r"[0-9]{1,18}")  # a version fits a signed 64-bit integer


def etag(version: int) -> str:
    return f'"{version}"'


def expected_version(if_match: str | None) -> int:
    if if_match is None:
        raise ApiProblem(
            "precondition_required", 'send If-Match with the case version you read, e.g. If-Match: "3"'
        )
    value = if_match.strip().removeprefix("W/").strip('"')
    if not _VERSION.fullmatch(value):  # ASCII digits only: str.isdigit() takes "²", int() does not
        raise InvalidPayload('If-Match must be a case version ETag such as "3"')
    return int(value)


async def json_object(request: Request) -> dict[str, Any] | None:
    raw = await request.body()
    if not raw.strip():
        return None
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
        raise InvalidPayload("the body is not JSON") from None
    if not isinstance(value, dict):
        raise InvalidPayload("the body must be a JSON object")
    return value


def fired(result: FireResult, response: Response) -> dict[str, Any]:
    response.headers["ETag"] = etag(result.version)
    if result.replayed:
        response.headers["Idempotency-Replayed"] = "true"
    return result.to_json()


@router.post(
    "/cases",
    status_code=201,
    summary="Register an inquiry: a new case with its household",
    description="Roles: caseworker of the origin office (the caller's office).",
    openapi_extra=body(p.RegisterInquiry),
    responses=responses(*FIRE),
)
async def create_case(
    request: Request, caller: Caller, response: Response, idempotency_key: IdempotencyKey = None
) -> dict[str, Any]:
    payload = await json_object(request)
    result = await run_in_threadpool(
        caller.engine.app.transitions.create_case,
        caller.actor,
        payload or {},
        idempotency_key,
        caller.request_id,
    )
    response.headers["Location"] = f"/cases/{result.case_id}"
    return fired(result, response)


@router.get(
    "/cases/{case_id}",
    summary="A case with its version (ETag) and the triggers the caller may fire now",
    responses=responses(*READ),
)
def get_case(case_id: str, caller: Caller, response: Response) -> dict[str, Any]:
    case = caller.engine.app.views.case(case_id, caller.actor)
    caller.log_access("read_case", "ok", case_id)
    response.headers["ETag"] = etag(case["version"])
    return case


@router.get(
    "/cases/{case_id}/history",
    summary="Every transition of the case, oldest first",
    responses=responses(*READ),
)
def case_history(case_id: str, caller: Caller) -> list[dict[str, Any]]:
    history = caller.engine.app.views.history(case_id, caller.actor)
    caller.log_access("read_history", "ok", case_id)
    return history


def _fire_endpoint(t: Transition) -> Any:
    async def fire(
        request: Request,
        case_id: str,
        caller: Caller,
        response: Response,
        if_match: IfMatch = None,
        idempotency_key: IdempotencyKey = None,
    ) -> dict[str, Any]:
        return await _fire(request, case_id, t.trigger, caller, response, if_match, idempotency_key)

    fire.__name__ = f"fire_{t.trigger}"
    return fire


async def _fire(
    request: Request,
    case_id: str,
    trigger: str,
    caller: Call,
    response: Response,
    if_match: str | None,
    idempotency_key: str | None,
) -> dict[str, Any]:
    if trigger in MONEY:
        await run_in_threadpool(limit_money, caller)
    # An unknown trigger answers unknown_trigger (or unknown_case) whatever the preconditions.
    version = expected_version(if_match) if trigger in LIFECYCLE.by_trigger else None
    payload = await json_object(request)
    result = await run_in_threadpool(
        caller.engine.app.transitions.fire,
        case_id,
        trigger,
        caller.actor,
        payload,
        version,
        idempotency_key,
        caller.request_id,
    )
    return fired(result, response)


for _t in LIFECYCLE.transitions:
    if _t.trigger == REGISTER:
        continue
    roles = ", ".join(sorted(r.value for r in _t.roles))
    sides = " or ".join(_t.sides)
    router.add_api_route(
        f"/cases/{{case_id}}/transitions/{_t.trigger}",
        _fire_endpoint(_t),
        methods=["POST"],
        summary=f"Fire {_t.trigger}: {', '.join(_t.sources)} -> {_t.dest}",
        description=(
            f"{_t.doc}\n\nRoles: {roles} of the {sides} office. Guards: "
            f"{', '.join(_t.guard_names) or 'none'}. Requires If-Match."
        ),
        openapi_extra=body(_t.payload, required=_t.payload is not p.NoPayload),
        responses=responses(*FIRE),
        tags=["transitions"],
    )


@router.post(
    "/cases/{case_id}/transitions/{trigger}",
    summary="Any other trigger name: answers unknown_trigger",
    responses=responses(*FIRE),
    tags=["transitions"],
    include_in_schema=False,
)
async def fire_unknown(
    request: Request,
    case_id: str,
    trigger: str,
    caller: Caller,
    response: Response,
    if_match: IfMatch = None,
    idempotency_key: IdempotencyKey = None,
) -> dict[str, Any]:
    return await _fire(request, case_id, trigger, caller, response, if_match, idempotency_key)
