"""Lists of cases the caller may see, with filters and keyset pages; a case's household."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from pydantic import AwareDatetime

from workflow.adapters.queries import CaseFilter, CasePage, CaseQueries, Household
from workflow.api.context import Caller
from workflow.api.problems import responses
from workflow.domain.errors import InvalidPayload
from workflow.domain.lifecycle import LIFECYCLES

router = APIRouter(tags=["cases"])

STATES = sorted({s.name for lifecycle in LIFECYCLES.values() for s in lifecycle.states})
LIST = ("unauthenticated", "invalid_payload", "rate_limited")

States = Annotated[
    list[str] | None,
    Query(
        description="Only cases in one of these states (repeat the parameter for several)",
        json_schema_extra={"items": {"type": "string", "enum": STATES}},
    ),
]
Office = Annotated[
    str | None,
    Query(
        max_length=32,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Only the cases this office takes part in: as origin or as destination (and owner)",
    ),
]
Overdue = Annotated[
    bool | None,
    Query(description="true: only cases with a pending deadline past due; false: only cases with none"),
]
UpdatedSince = Annotated[
    AwareDatetime | None,
    Query(description="Only cases changed at or after this time (RFC 3339, with an offset)"),
]
Limit = Annotated[int, Query(ge=1, le=200, description="Cases per page")]
Cursor = Annotated[
    str | None, Query(max_length=200, description="`next_cursor` of the previous page, as given")
]


@router.get(
    "/cases",
    summary="Cases the caller may see, filtered, in pages",
    description=(
        "The caller's office's cases and the cases handed to or from it, ordered by the time of their "
        "last change, then id. Pages are keyset pages: pass `next_cursor` back as `cursor` (with the "
        "same filters) until it is null. A case that changes while you page moves to the end, so it "
        "is seen again rather than missed. Items carry no personal data; `overdue` lists the case's "
        "pending deadlines whose due time has passed."
    ),
    responses=responses(*LIST),
)
def list_cases(
    caller: Caller,
    state: States = None,
    office: Office = None,
    overdue: Overdue = None,
    updated_since: UpdatedSince = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> CasePage:
    unknown = sorted(set(state or ()) - set(STATES))
    if unknown:
        raise InvalidPayload(f"unknown state {', '.join(unknown)}; the states are {', '.join(STATES)}")
    filters = CaseFilter(tuple(state or ()), office, overdue, updated_since)
    app = caller.engine.app
    return CaseQueries(app.db).cases(caller.actor, filters, cursor, limit, app.clock.now())


@router.get(
    "/cases/{case_id}/household",
    summary="The household of a case: names, dates of birth, contacts",
    description=(
        "Personal data: every read is written to the access log (who, which case, when), and the "
        "response is not to be cached. Another office's case answers 404 `unknown_case`."
    ),
    responses=responses("unauthenticated", "unknown_case", "rate_limited"),
)
def read_household(case_id: str, caller: Caller, response: Response) -> Household:
    household = CaseQueries(caller.engine.app.db).household(case_id, caller.actor)
    caller.log_access("read_household", "ok", case_id)
    response.headers["Cache-Control"] = "no-store"
    return household
