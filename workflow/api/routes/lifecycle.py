"""The lifecycle definition as JSON and as a Mermaid diagram, straight from the lifecycle table."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from functools import cache
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import PlainTextResponse

from workflow.api.context import Caller
from workflow.api.problems import ApiProblem, responses
from workflow.api.schemas import REF
from workflow.domain.diagram import mermaid
from workflow.domain.lifecycle import LIFECYCLE, LIFECYCLES, Lifecycle

router = APIRouter(tags=["lifecycle"])

MERMAID = "text/vnd.mermaid"
READ = ("unauthenticated", "not_found", "rate_limited")
Version = Annotated[
    str | None,
    Query(
        max_length=16,
        description=f"A lifecycle version (a case's `lifecycle_version`); default {LIFECYCLE.version}",
    ),
]


@dataclass(frozen=True, slots=True)
class DeadlineDoc:
    """Started on entering the state, cancelled on leaving it; fires ``fires`` when due."""

    name: str
    fires: str
    period: str  # the programme setting added to the start
    counted_from: str | None  # a date field of the case; null: the time the state is entered


@dataclass(frozen=True, slots=True)
class StateDoc:
    name: str
    phase: str
    final: bool
    deadlines: list[DeadlineDoc]
    stuck_after_days: float | None  # ops call a case stuck after this long without a transition


@dataclass(frozen=True, slots=True)
class TransitionDoc:
    """``dest`` "=" means the case stays in the state it is in."""

    trigger: str
    sources: list[str]
    dest: str
    roles: list[str]
    sides: list[str]
    events: list[str]
    guards: list[str]
    payload: str  # the name of its schema in components/schemas
    payload_schema: str
    restart_timers: bool
    doc: str


@dataclass(frozen=True, slots=True)
class LifecycleDoc:
    version: str
    initial: str
    states: list[StateDoc]
    transitions: list[TransitionDoc]


def _lifecycle(version: str | None) -> Lifecycle:
    lifecycle = LIFECYCLES.get(version or LIFECYCLE.version)
    if lifecycle is None:
        raise ApiProblem("not_found", f"no lifecycle version {version}; known: {', '.join(LIFECYCLES)}")
    return lifecycle


@cache
def document(version: str) -> LifecycleDoc:
    lifecycle = LIFECYCLES[version]
    states = [
        StateDoc(
            s.name,
            s.phase,
            s.final,
            [DeadlineDoc(d.name, d.fires, d.period, d.counted_from) for d in s.deadlines],
            s.stuck_after / timedelta(days=1) if s.stuck_after else None,
        )
        for s in lifecycle.states
    ]
    transitions = [
        TransitionDoc(
            t.trigger,
            list(t.sources),
            t.dest,
            sorted(r.value for r in t.roles),
            list(t.sides),
            list(t.events),
            list(t.guard_names),
            t.payload.__name__,
            REF.format(model=t.payload.__name__),
            t.restart_timers,
            t.doc,
        )
        for t in lifecycle.transitions
    ]
    return LifecycleDoc(lifecycle.version, lifecycle.initial, states, transitions)


@router.get(
    "/lifecycle",
    summary="The lifecycle: states, deadlines and transitions",
    description=(
        "The table the engine runs on: each state with its phase, whether it is final and the "
        "deadlines it starts; each transition with its source states, destination, the roles and "
        "office sides (origin, destination) that may fire it, the events it emits, its guards and "
        "the name of its payload schema."
    ),
    responses=responses(*READ),
)
def read_lifecycle(caller: Caller, version: Version = None) -> LifecycleDoc:
    return document(_lifecycle(version).version)


@router.get(
    "/lifecycle/diagram",
    summary="The lifecycle as a Mermaid state diagram",
    description=f"`text/plain` by default; `{MERMAID}` when the Accept header asks for it.",
    response_class=PlainTextResponse,
    responses={
        200: {
            "content": {"text/plain": {"schema": {"type": "string"}}, MERMAID: {"schema": {"type": "string"}}}
        },
        **responses(*READ),
    },
)
def lifecycle_diagram(
    request: Request,
    caller: Caller,
    version: Version = None,
    highlight: Annotated[str | None, Query(max_length=40, description="A state to highlight")] = None,
) -> PlainTextResponse:
    media_type = MERMAID if MERMAID in request.headers.get("accept", "") else "text/plain"
    return PlainTextResponse(mermaid(_lifecycle(version), highlight), media_type=media_type)
