"""GET /metrics: the Prometheus text format, for a scraper that usually holds no API token.

Unauthenticated unless ``AVRR_METRICS_TOKEN`` is set (then ``Authorization: Bearer <it>``). It
says nothing about persons: its labels are triggers, outcomes, error codes, effects, task names,
states and offices.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from workflow.api.context import engine
from workflow.api.problems import ApiProblem, responses

router = APIRouter(tags=["metrics"])

EXAMPLE = """# HELP avrr_transitions_total Fires of a trigger by outcome
# TYPE avrr_transitions_total counter
avrr_transitions_total{outcome="ok",trigger="register_inquiry"} 12.0
"""


def scraped(request: Request) -> CollectorRegistry:
    return request.app.state.metrics  # type: ignore[no-any-return]


@router.get(
    "/metrics",
    summary="Prometheus metrics (no authentication unless AVRR_METRICS_TOKEN is set)",
    description=(
        "Counters and histograms of every API process (transitions, refusals) and the database's "
        "figures read at most every 2 s (cases by state and office, outbox backlog, dead letters, "
        "timers). The workers serve theirs on their own port (`AVRR_WORKER_METRICS_PORT`)."
    ),
    response_class=Response,
    responses={
        200: {
            "content": {CONTENT_TYPE_LATEST: {"example": EXAMPLE}},
            "description": "Prometheus text format",
        },
        **responses("unauthenticated"),
    },
    openapi_extra={"security": []},
)
def metrics(
    request: Request,
    authorization: Annotated[
        str | None, Header(description="`Bearer <AVRR_METRICS_TOKEN>`, when set")
    ] = None,
) -> Any:
    token = engine(request).settings.metrics_token
    if token is not None:
        expected = f"Bearer {token.get_secret_value()}".encode()
        if not hmac.compare_digest((authorization or "").encode(), expected):
            raise ApiProblem("unauthenticated", "a bearer token for /metrics is required")
    return Response(generate_latest(scraped(request)), media_type=CONTENT_TYPE_LATEST)
