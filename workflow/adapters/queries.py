"""The API's read side: case lists, households and the event feed, each scoped to the caller."""

from __future__ import annotations

import base64
import binascii
import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Engine,
    Select,
    and_,
    any_,
    exists,
    false,
    func,
    or_,
    select,
    true,
    tuple_,
    union_all,
)

from workflow.adapters import tables as tb
from workflow.domain.actors import Actor, Role
from workflow.domain.errors import InvalidPayload, UnknownCase

c, t, o, m = tb.cases.c, tb.timers.c, tb.outbox.c, tb.household_members.c
# An outbox id is taken at INSERT but seen at COMMIT, so ids do not become visible in order: a
# reader that moved its cursor past a later id would never see an earlier one committing after.
# The feed serves ids only up to the newest row older than this; the transactions that took the
# ids before it have committed by then (a fire commits within milliseconds of its timestamp).
EVENT_SETTLE = timedelta(seconds=5)
_PENDING = tb.PENDING  # a literal: the partial index (see tables.PENDING)


@dataclass(frozen=True, slots=True)
class OverdueDeadline:
    """A pending deadline of the case whose due time has passed."""

    name: str
    due_at: datetime


@dataclass(frozen=True, slots=True)
class CaseSummary:
    """A case in a list: where it stands and which offices hold it; no personal data."""

    id: str
    state: str
    version: int
    origin_office: str
    destination_office: str
    owner_office: str
    updated_at: datetime
    overdue: list[OverdueDeadline]


@dataclass(frozen=True, slots=True)
class CasePage:
    """One page of cases, oldest change first; ``next_cursor`` is null on the last page."""

    items: list[CaseSummary]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class CaseFilter:
    states: tuple[str, ...] = ()
    office: str | None = None  # the origin or the destination office (the owner is one of them)
    overdue: bool | None = None  # True: a pending deadline is past due; False: none is
    updated_since: datetime | None = None


@dataclass(frozen=True, slots=True)
class Member:
    """A household member: personal data."""

    id: str
    full_name: str
    date_of_birth: date
    relationship: str
    phone: str | None
    email: str | None


@dataclass(frozen=True, slots=True)
class Household:
    case_id: str
    members: list[Member]


@dataclass(frozen=True, slots=True)
class FeedEvent:
    """An event of a case, without its payload; ``cursor`` is its position in the feed."""

    cursor: int
    event_id: str
    event_type: str
    case_id: str
    case_version: int
    occurred_at: datetime


@dataclass(frozen=True, slots=True)
class EventPage:
    """Events in commit order; pass ``next_cursor`` as ``after`` to read on (it stays put at the end)."""

    items: list[FeedEvent]
    next_cursor: int


def _late(now: datetime) -> ColumnElement[bool]:
    """The case has a pending deadline whose due time has passed."""
    return exists().where(t.case_id == c.id, t.status == _PENDING, t.due_at < now)


def visible_to(actor: Actor) -> ColumnElement[bool]:
    """``workflow.domain.machine.can_see`` in SQL: the actor's office is the case's origin, or its
    destination once the case is shared with it (``shared_at``); the owner is always one of the
    two. An office-less system actor sees all."""
    if actor.office is None:
        return true() if Role.SYSTEM in actor.roles else false()
    return or_(c.origin_office == actor.office, _shared_with(actor.office))


def _shared_with(office: str) -> ColumnElement[bool]:
    """The office is the case's destination and the case has been shared with it."""
    return and_(c.destination_office == office, c.shared_at.is_not(None))


def shared(actor: Actor, office: str) -> ColumnElement[bool]:
    """The cases the actor sees that ``office`` takes part in, spelled out as office pairs, which
    extended statistics on (origin_office, destination_office) can estimate; without them
    PostgreSQL may scan every case in order of change for two offices that share none."""
    if actor.office is None or actor.office == office:
        return and_(visible_to(actor), or_(c.origin_office == office, c.destination_office == office))
    return or_(
        and_(c.origin_office == actor.office, c.destination_office == office),
        and_(c.origin_office == office, _shared_with(actor.office)),
    )


def pack_cursor(values: list[str]) -> str:
    """A keyset position as the API gives it out: base64url of a JSON list, unpadded."""
    raw = json.dumps(values, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def unpack_cursor(cursor: str) -> Any:
    """``pack_cursor`` undone; raises ValueError (or TypeError, binascii.Error) on anything else."""
    return json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))


def encode_cursor(updated_at: datetime, case_id: str) -> str:
    return pack_cursor([updated_at.astimezone(UTC).isoformat(), case_id])


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        stamp, case_id = unpack_cursor(cursor)
        at = datetime.fromisoformat(stamp)
        if at.tzinfo is None or not isinstance(case_id, str) or not plausible_id(case_id):
            raise ValueError(cursor)
        return at.astimezone(UTC), case_id
    except (ValueError, TypeError, OverflowError, binascii.Error):
        raise InvalidPayload("the cursor is not one this API gave out") from None


def plausible_id(case_id: str) -> bool:
    """Ids are ASCII (UUIDs) of at most 36 characters: anything else is no case, and must not
    reach the database (PostgreSQL refuses NUL in text; a lone surrogate from a JSON escape in a
    cursor cannot be encoded for either database)."""
    return len(case_id) <= tb.ID_LENGTH and case_id.isascii() and "\x00" not in case_id


def utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise InvalidPayload("the time is out of range") from None


_SUMMARY = (c.id, c.state, c.version, c.origin_office, c.destination_office, c.owner_office, c.updated_at)


def _first(conditions: list[ColumnElement[bool]], states: list[str], n: int) -> Select[Any]:
    """The first ``n`` cases in order of change that meet the conditions and are in one of the
    states (any state when none is named)."""
    if len(states) <= 1:
        query = select(*_SUMMARY).where(*conditions, *(c.state == state for state in states))
        return query.order_by(c.updated_at, c.id).limit(n)
    # The first n of each state, then the first n of them all: each part walks the index (state,
    # updated_at) in order. With IN (...) PostgreSQL walked the index of updated_at from the
    # oldest case and filtered, through every closed case to the recent ones of active states.
    parts = [
        select(*_SUMMARY)
        .where(*conditions, c.state == state)
        .order_by(c.updated_at, c.id)
        .limit(n)
        # SQLite allows ORDER BY and LIMIT in a compound select only in subqueries.
        .subquery()
        for state in states
    ]
    found = union_all(*(select(part) for part in parts)).subquery()
    return select(*found.c).order_by(found.c.updated_at, found.c.id).limit(n)


class CaseQueries:
    def __init__(self, db: Engine) -> None:
        self._db = db

    def cases(self, actor: Actor, f: CaseFilter, cursor: str | None, limit: int, now: datetime) -> CasePage:
        """Keyset pages ordered by (updated_at, id): stable, and a case changed while a client
        pages moves to the end rather than out of sight."""
        conditions = [visible_to(actor) if f.office is None else shared(actor, f.office)]
        if f.overdue is not None:
            conditions.append(self._overdue(now) if f.overdue else ~_late(now))
        if f.updated_since:
            conditions.append(c.updated_at >= utc(f.updated_since))
        if cursor:
            conditions.append(tuple_(c.updated_at, c.id) > decode_cursor(cursor))
        query = _first(conditions, list(dict.fromkeys(f.states)), limit + 1)
        with self._db.connect() as conn:
            rows = conn.execute(query).all()
            page, more = rows[:limit], len(rows) > limit
            late: dict[str, list[OverdueDeadline]] = defaultdict(list)
            if page:
                for case_id, name, due_at in conn.execute(
                    select(t.case_id, t.name, t.due_at)
                    .where(t.case_id.in_([r.id for r in page]), t.status == _PENDING, t.due_at < now)
                    .order_by(t.due_at, t.name)
                ):
                    late[case_id].append(OverdueDeadline(name, due_at))
        items = [
            CaseSummary(
                r.id,
                r.state,
                r.version,
                r.origin_office,
                r.destination_office,
                r.owner_office,
                r.updated_at,
                overdue=late.get(r.id, []),
            )
            for r in page
        ]
        last = page[-1] if more else None
        return CasePage(items, encode_cursor(last.updated_at, last.id) if last else None)

    def _overdue(self, now: datetime) -> ColumnElement[bool]:
        """Cases with a pending deadline past due. PostgreSQL: the ids of the few such timers first
        (an array, which the planner takes for a handful of ids and looks up by primary key). As a
        correlated EXISTS the planner trusted its estimate that one case in eight is overdue (it
        cannot know pending timers lie in the future) and walked the cases in order of change,
        probing each one's timers: 0.3 s at 100,000 cases for a few dozen overdue ones."""
        if self._db.dialect.name != "postgresql":
            return _late(now)
        due = select(t.case_id).where(t.status == _PENDING, t.due_at < now).scalar_subquery()
        return c.id == any_(func.array(due))

    def household(self, case_id: str, actor: Actor) -> Household:
        """Another office's case is unknown here, as everywhere."""
        if not plausible_id(case_id):
            raise UnknownCase(case_id)
        with self._db.connect() as conn:
            if conn.scalar(select(c.id).where(c.id == case_id, visible_to(actor))) is None:
                raise UnknownCase(case_id)
            rows = conn.execute(
                select(m.id, m.full_name, m.date_of_birth, m.relationship, m.phone, m.email)
                .where(m.case_id == case_id)
                .order_by(m.position)
            ).all()
        return Household(case_id, [Member(*r) for r in rows])

    def events(self, actor: Actor, after: int, limit: int, now: datetime) -> EventPage:
        """Walks the outbox in id order from ``after``, joining each row's case on its primary key
        for the office condition, up to the newest settled row (see EVENT_SETTLE)."""
        settled = select(o.id).where(o.occurred_at <= now - EVENT_SETTLE).order_by(o.id.desc()).limit(1)
        with self._db.connect() as conn:
            # A value, not a subquery: PostgreSQL then sees the id range and walks the primary key
            # in order through a nested loop that stops at ``limit`` rows, rather than hashing the
            # whole range and sorting it (a hundred times slower from the start of a large outbox).
            horizon = conn.scalar(settled)
            if horizon is None or horizon <= after:
                return EventPage([], after)
            query = (
                select(o.id, o.event_id, o.event_type, o.case_id, o.case_version, o.occurred_at)
                .join(tb.cases, c.id == o.case_id)
                .where(o.id > after, o.id <= horizon, visible_to(actor))
                .order_by(o.id)
                .limit(limit)
            )
            items = [FeedEvent(*r) for r in conn.execute(query)]
        return EventPage(items, items[-1].cursor if items else after)
