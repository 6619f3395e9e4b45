"""Inbound handover: another deployment's signed package or decision, acted on once per key.

Not token-authenticated: the caller is a deployment, not a person. The HMAC signature over the
timestamp and the body, with the secret the two deployments share, is the authentication, and
it is checked before anything else is read, so an unsigned caller learns nothing.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Header, Request, Response
from fastapi.concurrency import run_in_threadpool

from workflow.adapters.channels.webhook import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    MalformedSignature,
    SignatureRejected,
    verify_signature,
)
from workflow.api.context import engine, request_id
from workflow.api.problems import ApiProblem, responses
from workflow.service_layer.documents import DECISION, PACKAGE
from workflow.service_layer.handover import HandoverInbox

log = structlog.get_logger(__name__)
_TIMESTAMP = re.compile(r"[0-9]{1,12}")  # as verify_signature takes it
router = APIRouter(tags=["handover"])

BODY: dict[str, Any] = {
    "security": [],
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["type"],
                    "properties": {"type": {"type": "string", "enum": [PACKAGE, DECISION]}},
                }
            }
        },
    },
}


@router.post(
    "/handover/inbound",
    summary="Receive a handover package or a handover decision from another deployment",
    description=(
        f"Signed, not token-authenticated: `{TIMESTAMP_HEADER}` (Unix seconds, within the window) and "
        f"`{SIGNATURE_HEADER}` (`v2=` hex HMAC-SHA256, with the shared handover secret, of the "
        f"timestamp, a line feed, the `{IDEMPOTENCY_HEADER}`, a line feed and the body). "
        f"`{IDEMPOTENCY_HEADER}` is required and signed: the same key and body answer as the first "
        "time and change nothing; the same key with another body answers 409. A package "
        f"(`{PACKAGE}`) opens the case here in `handover_pending` for the destination office; a "
        f"decision (`{DECISION}`) fires `accept_handover` or `refuse_handover` on the origin's case "
        "as the destination office's automation (the system role)."
    ),
    openapi_extra=BODY,
    responses=responses(
        "bad_signature",
        "invalid_payload",
        "idempotency_key_reused",
        "transition_not_allowed",
        "guard_failed",
        "permission_denied",
        "unknown_case",
        "version_conflict",
    ),
)
async def receive(
    request: Request,
    response: Response,
    timestamp: Annotated[str | None, Header(alias=TIMESTAMP_HEADER)] = None,
    signature: Annotated[str | None, Header(alias=SIGNATURE_HEADER)] = None,
    idempotency_key: Annotated[str | None, Header(alias=IDEMPOTENCY_HEADER)] = None,
) -> dict[str, Any]:
    eng = engine(request)
    secret = eng.settings.webhook_secret
    if secret is None:
        raise ApiProblem("bad_signature", "this deployment has no handover secret configured")
    try:
        # What the headers alone refuse is refused before the body is read; verify_signature
        # checks them again, with the body.
        if not _TIMESTAMP.fullmatch(timestamp or ""):
            raise MalformedSignature("the timestamp is not a whole number of Unix seconds")
        if not (signature or "").startswith("v2="):
            raise MalformedSignature("the signature is not a v2 signature")
        body = await request.body()
        verify_signature(
            secret, timestamp or "", body, signature or "", eng.app.clock.now(), key=idempotency_key or ""
        )
    except SignatureRejected as refused:
        log.warning("handover.signature_rejected", reason=type(refused).__name__)
        raise ApiProblem("bad_signature", str(refused)) from None
    inbox = HandoverInbox(eng.app.uow, eng.app.transitions, eng.app.clock)
    received = await run_in_threadpool(inbox.receive, idempotency_key or "", body, request_id(request))
    if received.replayed:
        response.headers["Idempotency-Replayed"] = "true"
    return received.to_json()
