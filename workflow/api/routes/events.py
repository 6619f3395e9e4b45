"""The event feed: ids and types of the events of the cases the caller may see, in order."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from workflow.adapters.queries import EVENT_SETTLE, CaseQueries, EventPage
from workflow.api.context import Caller
from workflow.api.problems import responses

router = APIRouter(tags=["events"])

MAX_CURSOR = 2**63 - 1  # the outbox id is a bigint


@router.get(
    "/events",
    summary="Events of the caller's cases after a cursor, oldest first",
    description=(
        "A poll-friendly feed of the outbox: event id, type, case id and version, time; never the "
        "payload. Only events of cases the caller may see (its office's and those handed to or from "
        "it). Start with `after=0`, then pass `next_cursor` as `after`; at the end `next_cursor` stays "
        f"where it is. An event is served once it is {int(EVENT_SETTLE.total_seconds())} seconds old, "
        "so an event whose transaction commits after a later one's is not skipped."
    ),
    responses=responses("unauthenticated", "invalid_payload", "rate_limited"),
)
def event_feed(
    caller: Caller,
    after: Annotated[int, Query(ge=0, le=MAX_CURSOR, description="The cursor of the last event read")] = 0,
    limit: Annotated[int, Query(ge=1, le=500, description="Events per page")] = 100,
) -> EventPage:
    app = caller.engine.app
    return CaseQueries(app.db).events(caller.actor, after, limit, app.clock.now())
