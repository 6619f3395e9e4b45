"""What ops watch: outbox lag, dead letters, due and overdue timers, stuck cases, case counts,
recent jobs and one case's timeline. Ids, states, offices, triggers and times only: no names,
contacts, payloads or free-text reasons, which ops have no need to see."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import (
    Connection,
    Engine,
    Select,
    Subquery,
    func,
    select,
    union_all,
)

from workflow.adapters import tables as tb
from workflow.adapters.jobs import DeadLetter, SqlDeadLetters
from workflow.adapters.queries import plausible_id
from workflow.domain.errors import UnknownCase
from workflow.domain.lifecycle import LIFECYCLE, Lifecycle

c, o, t, j, h = tb.cases.c, tb.outbox.c, tb.timers.c, tb.jobs.c, tb.case_history.c
dl, k = tb.dead_letters.c, tb.case_counts.c
_PENDING, _RUNNING = tb.PENDING, tb.RUNNING  # literals: the partial indexes (see tables.PENDING)

# A timer is due at its due time; beat claims due timers every few seconds, so one still pending
# this long after its due time was missed (no beat, no worker, or a failing fire).
OVERDUE_GRACE = timedelta(minutes=5)


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class StateCount:
    state: str
    office: str  # the office that owns the case now
    count: int


@dataclass(frozen=True, slots=True)
class OpsStatus:
    """One screen: is the engine healthy, and is anything waiting for a person?"""

    at: datetime
    outbox_backlog: int  # committed events not yet handed to the broker
    outbox_oldest_age_s: float | None  # age of the oldest of them; None when there is none
    jobs_running: int
    dead_letters_open: int
    timers_due: int  # pending and due now (beat fires them within seconds)
    timers_overdue: int  # pending and due longer ago than the grace: missed
    stuck_cases: int
    cases_by_state: list[StateCount] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class OverdueTimer:
    case_id: str
    name: str
    state: str
    fires_trigger: str
    due_at: datetime
    overdue_s: float


@dataclass(frozen=True, slots=True)
class StuckCase:
    case_id: str
    state: str
    owner_office: str
    updated_at: datetime
    idle_s: float  # time since its last transition
    allowed_s: float  # what its state allows


@dataclass(frozen=True, slots=True)
class JobRun:
    event_id: str
    effect: str
    case_id: str
    event_type: str
    status: str  # running, pending (replayed), done, dead
    attempts: int
    started_at: datetime
    finished_at: datetime | None
    last_error: str | None


@dataclass(frozen=True, slots=True)
class Step:
    version: int
    trigger: str
    from_state: str | None
    to_state: str
    actor_id: str
    occurred_at: datetime


@dataclass(frozen=True, slots=True)
class Event:
    event_id: str
    event_type: str
    case_version: int
    occurred_at: datetime
    sent_at: datetime | None


@dataclass(frozen=True, slots=True)
class Timer:
    name: str
    state: str
    fires_trigger: str
    status: str
    due_at: datetime
    fired_at: datetime | None


@dataclass(frozen=True, slots=True)
class TaskRow:
    """A follow-up task the workers opened for the case, and what became of it."""

    kind: str
    office: str
    status: str
    due_on: date | None
    created_at: datetime
    completed_at: datetime | None
    completed_by: str | None
    source_event_id: str | None


@dataclass(frozen=True, slots=True)
class Timeline:
    """A case as ops see it: where it stands and everything the engine did with it."""

    case_id: str
    state: str
    version: int
    lifecycle_version: str
    origin_office: str
    destination_office: str
    owner_office: str
    updated_at: datetime
    history: list[Step]
    events: list[Event]
    jobs: list[JobRun]
    timers: list[Timer]
    tasks: list[TaskRow]


class OpsViews:
    def __init__(
        self, db: Engine, lifecycle: Lifecycle = LIFECYCLE, overdue_grace: timedelta = OVERDUE_GRACE
    ) -> None:
        self._db = db
        self._lifecycle = lifecycle
        self._grace = overdue_grace

    # -- the one screen ------------------------------------------------------------------------

    def status(self, now: datetime, with_counts: bool = True) -> OpsStatus:
        with self._db.connect() as conn:
            backlog, oldest = self._outbox(conn)
            counts = self._counts(conn) if with_counts else []
            running = conn.scalar(select(func.count()).select_from(tb.jobs).where(j.status == _RUNNING))
            dead = conn.scalar(
                select(func.count()).select_from(tb.dead_letters).where(dl.replayed_at.is_(None))
            )
            due = conn.scalar(self._timers_count(now))
            overdue = conn.scalar(self._timers_count(now - self._grace))
            stuck = self._stuck_count(conn, now)
        return OpsStatus(
            at=now,
            outbox_backlog=backlog,
            outbox_oldest_age_s=None if oldest is None else max(0.0, (now - _aware(oldest)).total_seconds()),
            jobs_running=running or 0,
            dead_letters_open=dead or 0,
            timers_due=due or 0,
            timers_overdue=overdue or 0,
            stuck_cases=stuck or 0,
            cases_by_state=counts,
        )

    def outbox_lag(self, now: datetime) -> tuple[int, float | None]:
        """Unsent events and the age in seconds of the oldest (None when none waits)."""
        with self._db.connect() as conn:
            backlog, oldest = self._outbox(conn)
        return backlog, None if oldest is None else max(0.0, (now - _aware(oldest)).total_seconds())

    @staticmethod
    def _outbox(conn: Connection) -> tuple[int, datetime | None]:
        # The relay's own partial index (sent_at IS NULL) serves both: the backlog stays small.
        row = conn.execute(
            select(func.count(), func.min(o.occurred_at)).select_from(tb.outbox).where(o.sent_at.is_(None))
        ).one()
        return int(row[0]), row[1]

    @staticmethod
    def _counts(conn: Connection) -> list[StateCount]:
        """From the counters the database keeps (tables.case_counts): counting every case took
        0.3 s at a million cases; these are a few hundred rows, exact as of the last commit."""
        total = func.sum(k.cases)
        rows = conn.execute(
            select(k.state, k.office, total)
            .group_by(k.state, k.office)
            .having(total > 0)
            .order_by(k.state, k.office)
        )
        return [StateCount(state, office, int(n)) for state, office, n in rows]

    def cases_by_state(self) -> list[StateCount]:
        with self._db.connect() as conn:
            return self._counts(conn)

    @staticmethod
    def _timers_count(due_before: datetime) -> Select[int]:
        return select(func.count()).select_from(tb.timers).where(t.status == _PENDING, t.due_at <= due_before)

    # -- lists that need a person --------------------------------------------------------------

    def dead_letters(self, limit: int = 200) -> list[DeadLetter]:
        return SqlDeadLetters(self._db).open(limit)

    def overdue_timers(self, now: datetime, limit: int = 200) -> list[OverdueTimer]:
        query = (
            select(t.case_id, t.name, t.state, t.fires_trigger, t.due_at)
            .where(t.status == _PENDING, t.due_at <= now - self._grace)
            .order_by(t.due_at)
            .limit(limit)
        )
        with self._db.connect() as conn:
            return [
                OverdueTimer(case_id, name, state, fires, due, (now - _aware(due)).total_seconds())
                for case_id, name, state, fires, due in conn.execute(query)
            ]

    def _limits(self, now: datetime, state: str | None = None) -> list[tuple[str, datetime]]:
        """Each state with a limit (or just ``state``) and the time before which its cases are stuck."""
        return [
            (s.name, now - s.stuck_after)
            for s in self._lifecycle.states
            if s.stuck_after is not None and not s.final and state in (None, s.name)
        ]

    # Stuck cases are asked state by state and put together, so that each part is a range of the
    # index (state, updated_at). One query with an OR of the states walked the index of
    # updated_at from the oldest case instead, through every closed case: 0.4 s at a million.

    def _stuck_count(self, conn: Connection, now: datetime) -> int:
        parts = [
            select(func.count().label("n"))
            .select_from(tb.cases)
            .where(c.state == name, c.updated_at < before)
            for name, before in self._limits(now)
        ]
        if not parts:
            return 0
        counts = union_all(*parts).subquery()
        return int(conn.scalar(select(func.coalesce(func.sum(counts.c.n), 0))) or 0)

    def _stuck_parts(self, now: datetime, limit: int, state: str | None) -> Subquery | None:
        parts = [
            select(c.id, c.state, c.owner_office, c.updated_at)
            .where(c.state == name, c.updated_at < before)
            .order_by(c.updated_at, c.id)
            .limit(limit)
            .subquery()  # SQLite allows ORDER BY and LIMIT in a compound select only in subqueries
            for name, before in self._limits(now, state)
        ]
        return union_all(*(select(part) for part in parts)).subquery() if parts else None

    def stuck_cases(self, now: datetime, limit: int = 200, state: str | None = None) -> list[StuckCase]:
        """The longest-idle cases first, as far as their state allows; ``state``: of that state only."""
        limits = {s.name: s.stuck_after for s in self._lifecycle.states if s.stuck_after is not None}
        stuck = self._stuck_parts(now, limit, state)
        if stuck is None:
            return []
        query = select(stuck).order_by(stuck.c.updated_at, stuck.c.id).limit(limit)
        with self._db.connect() as conn:
            return [
                StuckCase(
                    case_id,
                    state,
                    office,
                    _aware(updated),
                    (now - _aware(updated)).total_seconds(),
                    limits[state].total_seconds(),
                )
                for case_id, state, office, updated in conn.execute(query)
            ]

    def recent_jobs(self, limit: int = 50) -> list[JobRun]:
        """The latest jobs the workers started, running ones included, newest first."""
        query = select(*_JOB_COLUMNS).order_by(j.started_at.desc()).limit(limit)
        with self._db.connect() as conn:
            return [JobRun(*row) for row in conn.execute(query)]

    # -- one case ------------------------------------------------------------------------------

    def timeline(self, case_id: str) -> Timeline:
        if not plausible_id(case_id):  # cannot exist; PostgreSQL would refuse a NUL in the comparison
            raise UnknownCase(case_id)
        with self._db.connect() as conn:
            case = conn.execute(
                select(
                    c.id,
                    c.state,
                    c.version,
                    c.lifecycle_version,
                    c.origin_office,
                    c.destination_office,
                    c.owner_office,
                    c.updated_at,
                ).where(c.id == case_id)
            ).one_or_none()
            if case is None:
                raise UnknownCase(case_id)
            history = [
                Step(*row)
                for row in conn.execute(
                    select(h.version, h.trigger, h.from_state, h.to_state, h.actor_id, h.occurred_at)
                    .where(h.case_id == case_id)
                    .order_by(h.version)
                )
            ]
            events = [
                Event(*row)
                for row in conn.execute(
                    select(o.event_id, o.event_type, o.case_version, o.occurred_at, o.sent_at)
                    .where(o.case_id == case_id)
                    .order_by(o.id)
                )
            ]
            jobs = [
                JobRun(*row)
                for row in conn.execute(
                    select(*_JOB_COLUMNS).where(j.case_id == case_id).order_by(j.started_at, j.effect)
                )
            ]
            timers = [
                Timer(*row)
                for row in conn.execute(
                    select(t.name, t.state, t.fires_trigger, t.status, t.due_at, t.fired_at)
                    .where(t.case_id == case_id)
                    .order_by(t.created_at, t.name)
                )
            ]
            ts = tb.tasks.c
            tasks = [
                TaskRow(*row)
                for row in conn.execute(
                    select(
                        ts.kind,
                        ts.office,
                        ts.status,
                        ts.due_on,
                        ts.created_at,
                        ts.completed_at,
                        ts.completed_by,
                        ts.source_event_id,
                    )
                    .where(ts.case_id == case_id)
                    .order_by(ts.created_at, ts.kind)
                )
            ]
        return Timeline(*case, history=history, events=events, jobs=jobs, timers=timers, tasks=tasks)


_JOB_COLUMNS = (
    j.event_id,
    j.effect,
    j.case_id,
    j.event_type,
    j.status,
    j.attempts,
    j.started_at,
    j.finished_at,
    j.last_error,
)
