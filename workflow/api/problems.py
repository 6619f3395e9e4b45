"""RFC 9457 problem details: one ``type`` per refusal, one status each, never a stack trace."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from workflow.domain import errors as e

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "/problems/"
PAYLOAD_TOO_LARGE = "payload_too_large"


class ApiProblem(Exception):
    """A refusal of the HTTP layer itself (credentials, preconditions, rate limits)."""

    def __init__(self, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.code, self.detail, self.headers = code, detail, headers or {}


# code -> (status, title). The domain's errors first, then the HTTP layer's own.
PROBLEMS: dict[str, tuple[int, str]] = {
    e.UnknownCase.code: (404, e.UnknownCase.title),
    e.UnknownTrigger.code: (404, e.UnknownTrigger.title),
    e.TransitionNotAllowed.code: (409, e.TransitionNotAllowed.title),
    e.GuardFailed.code: (409, e.GuardFailed.title),
    e.BudgetExceeded.code: (409, e.BudgetExceeded.title),
    e.IdempotencyKeyReused.code: (409, e.IdempotencyKeyReused.title),
    e.VersionConflict.code: (412, e.VersionConflict.title),
    e.PermissionDenied.code: (403, e.PermissionDenied.title),
    e.InvalidPayload.code: (422, e.InvalidPayload.title),
    e.UnknownTask.code: (404, e.UnknownTask.title),
    e.TaskClosed.code: (409, e.TaskClosed.title),
    "unauthenticated": (401, "Missing or bad credentials"),
    "precondition_required": (428, "If-Match required"),
    "rate_limited": (429, "Too many requests"),
    PAYLOAD_TOO_LARGE: (413, "Request body too large"),
    "not_found": (404, "No such resource"),
    "method_not_allowed": (405, "Method not allowed"),
    "bad_signature": (401, "Bad or stale signature"),
    "broker_unavailable": (503, "The broker cannot be reached"),
    "internal_error": (500, "Internal error"),
}
assert {error.code for error in e.ALL_ERRORS} <= set(PROBLEMS)


def problem(
    code: str,
    detail: str,
    instance: str | None = None,
    request_id: str | None = None,
    extra: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    status, title = PROBLEMS[code]
    body: dict[str, Any] = {"type": TYPE_BASE + code, "title": title, "status": status, "detail": detail}
    if instance:
        body["instance"] = instance
    if request_id:
        body["request_id"] = request_id
    body.update(extra or {})
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def responses(*codes: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the problems a route may answer with."""
    by_status: dict[int, list[str]] = {}
    for code in codes:
        by_status.setdefault(PROBLEMS[code][0], []).append(code)
    return {
        status: {
            "description": " or ".join(f"`{TYPE_BASE}{c}` ({PROBLEMS[c][1]})" for c in names),
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for status, names in sorted(by_status.items())
    }


PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "request_id": {"type": "string"},
    },
    "additionalProperties": True,
}
