"""The workers' job rows: attempts, outcome and the inbox key that makes effects happen once."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import structlog
from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    String,
    and_,
    any_,
    bindparam,
    case,
    exists,
    func,
    insert,
    literal,
    null,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError

from workflow.adapters import tables as tb
from workflow.adapters.db import POOL_RECYCLE, execute_fixed, writing
from workflow.domain.effects import COMPLETE_TASKS, SETTLED_BY, SETTLING, Effect
from workflow.domain.lifecycle import DESTINATION
from workflow.service_layer.effects import Job

log = structlog.get_logger(__name__)
j = tb.jobs.c
OPEN_TASK = tb.OPEN_TASK  # a literal: the partial index of open tasks


FINISHED = ("done", "dead")
JOB_IDS = ("event_id", "effect", "case_id", "event_type")  # what a job's row is written with


def _key(job: Job) -> ColumnElement[bool]:
    return and_(j.event_id == job.event_id, j.effect == job.effect)


def _lock_key(event_id: str) -> int:
    """The event's advisory lock: 64 bits of a hash of its id (two ids that collide while both
    run would make a copy pass over the one it should run, until its message is sent again)."""
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "big", signed=True)


_TRY_LOCKS = "SELECT k, pg_try_advisory_lock(k) FROM unnest(%s::bigint[]) AS k"
_UNLOCK_ALL = "SELECT pg_advisory_unlock_all()"


class EventLocks:
    """Which events of a message no other process is running now (``running_alone``).

    Two copies of a message may run at once: a relay that died between publishing a batch and
    marking it sent publishes the batch again, and the workers take both copies together (a
    packed copy holds the same events). A copy skips the events the other runs; that run
    finishes them, or its process dies and its message goes back to the queue (reject on worker
    lost), so nothing waits on the skip. PostgreSQL: session advisory locks on one connection
    the process keeps for them (two statements a message, outside SQLAlchemy: a pooled
    checkout and its isolation switch cost as much as the statement), released at the
    message's end or with the process. SQLite (its workers share the database file's host):
    a byte-range lock each, at the event's 63-bit hash as offset, in one file beside the
    database, released at the message's end or with the process. One instance per process
    (neither lock is shared across a fork)."""

    def __init__(self, db: Engine) -> None:
        self._db = db
        self._conn: Any = None  # the pool's connection, kept
        self._file: int | None = None  # SQLite: the lock file, kept open (closing drops locks)
        database = db.url.database if db.dialect.name == "sqlite" else None
        self._path = Path(f"{database}.event-locks") if database and database != ":memory:" else None

    @contextmanager
    def running_alone(self, event_ids: Sequence[str]) -> Iterator[set[str]]:
        if self._path is not None and event_ids:
            with self._file_locks(event_ids) as held:
                yield held
            return
        if self._db.dialect.name != "postgresql" or not event_ids:
            yield set(event_ids)
            return
        keys = {_lock_key(event_id): event_id for event_id in event_ids}
        # A kept connection the server ended (a restart, a failover) fails its first statement
        # while the database is back: a fresh one is tried before running unlocked, as a copy
        # of this message, published again by a relay the same restart interrupted, may run now.
        # The pool's idle connections date from before the restart too: they are closed, so
        # the second try opens a new one.
        for last_try in (False, True):
            try:
                cursor = self._cursor()
                cursor.execute(_TRY_LOCKS, (list(keys),))
                held = {keys[key] for key, locked in cursor.fetchall() if locked}
                break
            except (psycopg.Error, DBAPIError) as exc:
                self._drop()
                if not last_try:
                    self._db.pool.dispose()  # idle connections only; the pool stays in use
                else:  # the database is away: the run meets it and retries
                    log.warning("event_locks.unavailable", error=type(exc).__name__)
                    yield set(event_ids)
                    return
        try:
            yield held
        finally:
            try:
                cursor.execute(_UNLOCK_ALL)
            except (psycopg.Error, DBAPIError):  # closing the connection ends its locks
                self._drop()

    @contextmanager
    def _file_locks(self, event_ids: Sequence[str]) -> Iterator[set[str]]:
        assert self._path is not None
        if self._file is None:
            self._file = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        held: dict[str, int] = {}
        unlocked: set[str] = set()
        try:
            for event_id in event_ids:
                offset = _lock_key(event_id) & (2**63 - 1)
                try:
                    fcntl.lockf(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset)
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):  # no locks here: run unlocked
                        log.warning("event_locks.unavailable", error=errno.errorcode.get(exc.errno or 0, "?"))
                        unlocked.add(event_id)
                    continue  # else another process holds it
                held[event_id] = offset
            yield set(held) | unlocked
        finally:
            for offset in held.values():
                fcntl.lockf(self._file, fcntl.LOCK_UN, 1, offset)

    def _cursor(self) -> Any:
        if self._conn is None:
            self._conn = self._db.raw_connection()
            self._conn.driver_connection.autocommit = True
        return self._conn.driver_connection.cursor()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with suppress(Exception):
                conn.invalidate()


@contextmanager
def autocommit(db: Engine, write: bool = True) -> Iterator[Connection]:
    """A connection whose statements each commit as they run: on PostgreSQL no BEGIN and
    COMMIT round trips. For single statements, or reads that need no common snapshot. SQLite
    gets an ordinary transaction (its writers queue on one lock, and there is no wire)."""
    if db.dialect.name == "postgresql":
        with db.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            yield conn
    elif write:
        with writing(db) as conn:
            yield conn
    else:
        with db.connect() as conn:
            yield conn


class _Statements:
    """A job's statements, built once per dialect with bound parameters: per job, SQLAlchemy
    only looks the compiled form up (no statement to build, no cache key to compute)."""

    def __init__(self, insert_: Callable[..., Any], postgres: bool) -> None:
        key = and_(j.event_id == bindparam("p_event_id"), j.effect == bindparam("p_effect"))
        now = bindparam("p_now", type_=j.started_at.type)
        # A job's identity, as every statement that writes its row binds it.
        ids = {name: bindparam(f"p_{name}", type_=j[name].type) for name in JOB_IDS}
        upsert = insert_(tb.jobs).values(**ids, status="running", attempts=1, started_at=now)
        # Counts an attempt of an unfinished job; a done or dead job is left alone (no row back).
        self.start = upsert.on_conflict_do_update(
            index_elements=[j.event_id, j.effect],
            set_={"attempts": j.attempts + 1, "started_at": upsert.excluded.started_at},
            # Two comparisons, not NOT IN (...): an IN list is rendered anew on every execution.
            where=and_(j.status != FINISHED[0], j.status != FINISHED[1]),
        ).returning(j.status, j.attempts)
        self.status = select(j.status, j.attempts).where(key)
        d = tb.deliveries.c
        self.delivered = select(d.channel).where(
            d.event_id == bindparam("p_event_id"), d.effect == bindparam("p_effect")
        )
        # A send recorded once: a concurrent run of the same job that recorded it first wins.
        self.record = (
            insert_(tb.deliveries)
            .values(
                event_id=bindparam("p_event_id"),
                effect=bindparam("p_effect"),
                channel=bindparam("p_channel"),
                delivered_at=bindparam("p_now", type_=d.delivered_at.type),
            )
            .on_conflict_do_nothing()
        )
        self.finish = (
            update(tb.jobs)
            .where(key)
            .values(
                status=bindparam("p_status"),
                last_error=bindparam("p_error"),
                finished_at=bindparam("p_now", type_=j.finished_at.type),
            )
        )
        # PostgreSQL: the last delivery's record and the job's end in one statement.
        self.record_and_finish = self.finish.add_cte(self.record.cte("recorded"))
        # A settling job's UPDATE (close_tasks), by effect kind; a replacing task's too.
        self.settle = {
            kind: update(tb.tasks)
            .where(*settleable(postgres))
            .values(status=status, completed_at=bindparam("p_now", type_=tb.tasks.c.completed_at.type))
            for kind, status in SETTLING.items()
        }
        cs, ts, o = tb.cases.c, tb.tasks.c, tb.outbox.c
        # The first later event of the case that settles the task (p_settlers: a journey called
        # off, a case closed, or the work done, p_done): the task is made already settled, as that
        # event left it. Its job may run after that event's own, whose close found nothing.
        later = tb.outbox.alias("later")
        this = select(o.id).where(o.event_id == bindparam("p_event_id")).scalar_subquery()
        first_settler = (
            select(later.c.event_type)
            .where(
                later.c.case_id == cs.id,
                later.c.id > this,
                _one_of(later.c.event_type, "p_settlers", postgres),
            )
            .order_by(later.c.id)
            .limit(1)
            .scalar_subquery()
        )
        now = bindparam("p_now", type_=ts.created_at.type)
        settled_status = case(
            (_one_of(first_settler, "p_done", postgres), literal("done", ts.status.type)),
            (first_settler.is_not(None), literal("cancelled", ts.status.type)),
            else_=literal("open", ts.status.type),
        )
        status = {False: literal("open", ts.status.type), True: settled_status}
        closed_at = {False: null(), True: case((first_settler.is_not(None), now), else_=null())}
        task_columns = [
            "id",
            "case_id",
            "kind",
            "status",
            "office",
            "due_on",
            "source_event_id",
            "created_at",
            "completed_at",
        ]
        task_rows = {
            (side, checked): select(
                bindparam("p_task_id", type_=ts.id.type),
                cs.id,
                bindparam("p_kind", type_=ts.kind.type),
                status[checked],
                cs.destination_office if side == DESTINATION else cs.origin_office,
                bindparam("p_due_on", type_=ts.due_on.type),
                bindparam("p_event_id", type_=ts.source_event_id.type),
                now,
                closed_at[checked],
            ).where(cs.id == bindparam("p_case_id"))
            for side in (DESTINATION, "origin")
            for checked in (False, True)
        }
        self.task = {
            key: insert_(tb.tasks).from_select(task_columns, rows) for key, rows in task_rows.items()
        }
        # PostgreSQL: the task and the job's done in one statement (one round trip, atomic).
        # No row back when neither write happened: the case is not there, or another delivery
        # of the job made the task first (it waits for that one to commit, then skips).
        self.task_and_finish: dict[tuple[str, bool, bool], Any] = {}
        for (side, checked), insert_task in self.task.items():
            made = (
                insert_task.on_conflict_do_nothing(index_elements=[ts.source_event_id, ts.kind])
                .returning(ts.id, ts.status)
                .cte(f"task_{side}")
            )
            done = self.finish.where(exists(made.select())).returning(j.attempts)
            self.task_and_finish[side, checked, False] = done
            # A task that replaces the open ones of its kind (Effect.replaces) marks those this
            # event settles done, in the same statement (only in the run that makes the task: a
            # repeat makes none, and the job is done already).
            replaced = self.settle[COMPLETE_TASKS].where(exists(made.select()))
            self.task_and_finish[side, checked, True] = done.add_cte(replaced.cte(f"replaced_{side}"))
        # SQLite: the same, a statement of its own after the insert, in its transaction.
        self.replace_prior = self.settle[COMPLETE_TASKS]
        # PostgreSQL, a job on its message's first delivery (create_task_first): its row
        # written done, with its task, in one statement, instead of a start (a row written
        # running) and then the task with an UPDATE of that row to done. The row is written
        # only if there is none (a copy of the message, or a lost-message resend, found it
        # started or finished) and the case is there; the task only if the row was written.
        # A row back: both happened; none: neither, and the ordinary path takes the job.
        self.task_first: dict[tuple[str, bool, bool], Any] = {}
        # The same for a settling job (settle_first): its row written done with its UPDATE of
        # the tasks it settles; a row back (how many it settled) when both happened.
        self.settle_first: dict[str, Any] = {}
        if postgres:

            def job_row(name: str, *where: ColumnElement[bool]) -> Any:
                done = (literal("done", j.status.type), literal(1, j.attempts.type), now, now)
                row = select(*ids.values(), *done).where(*where)
                return (
                    pg_insert(tb.jobs)
                    .from_select([*JOB_IDS, "status", "attempts", "started_at", "finished_at"], row)
                    .on_conflict_do_nothing(index_elements=[j.event_id, j.effect])
                    .returning(j.attempts)
                    .cte(name)
                )

            for kind, settle in self.settle.items():
                settling_row = job_row(f"settling_{kind}")
                settled = settle.where(exists(settling_row.select())).returning(ts.id).cte(f"settled_{kind}")
                count = select(func.count()).select_from(settled).scalar_subquery()
                self.settle_first[kind] = select(count).select_from(settling_row)
            task_row = job_row("job_row", exists().where(cs.id == bindparam("p_case_id")))
            for (side, checked), rows in task_rows.items():
                made = (
                    pg_insert(tb.tasks)
                    .from_select(task_columns, rows.where(exists(task_row.select())))
                    .on_conflict_do_nothing(index_elements=[ts.source_event_id, ts.kind])
                    .returning(ts.id)
                    .cte(f"first_task_{side}")
                )
                written = select(task_row.c.attempts).add_cte(made)
                self.task_first[side, checked, False] = written
                replaced = self.settle[COMPLETE_TASKS].where(exists(made.select()))
                self.task_first[side, checked, True] = written.add_cte(replaced.cte(f"first_replaced_{side}"))


def _one_of(column: ColumnElement[str], name: str, postgres: bool) -> ColumnElement[bool]:
    """``column`` is one of the list bound as ``name``: on PostgreSQL one array parameter (an
    IN list's parameters are rendered anew on every execution, a tenth of a job's CPU)."""
    if postgres:
        return column == any_(bindparam(name, type_=ARRAY(String)))
    return column.in_(bindparam(name, expanding=True))


def settleable(postgres: bool) -> tuple[ColumnElement[bool], ...]:
    """The case's open tasks of the kind (p_case_id, p_kind) that this event (p_event_id)
    settles: made by an earlier event, and with no settling event of theirs (p_settlers) between
    that one and this, whose own job settles them. Jobs of one case run in any order (retries,
    messages side by side): the outcome is the one their commit order gives."""
    ts, o = tb.tasks.c, tb.outbox.c
    source, between = tb.outbox.alias("source"), tb.outbox.alias("between")
    this = select(o.id).where(o.event_id == bindparam("p_event_id")).scalar_subquery()
    made = (
        select(source.c.id)
        .where(source.c.event_id == ts.source_event_id)
        .correlate(tb.tasks)
        .scalar_subquery()
    )
    return (
        ts.case_id == bindparam("p_case_id"),
        ts.kind == bindparam("p_kind"),
        ts.status == OPEN_TASK,  # a literal: the partial index of open tasks
        made < this,
        ~exists().where(
            between.c.case_id == bindparam("p_case_id"),
            between.c.id > made,
            between.c.id < this,
            _one_of(between.c.event_type, "p_settlers", postgres),
        ),
    )


_STATEMENTS = {"postgresql": _Statements(pg_insert, True), "sqlite": _Statements(sqlite_insert, False)}


def _params(job: Job, now: datetime, **more: Any) -> dict[str, Any]:
    return {
        "p_event_id": job.event_id,
        "p_effect": job.effect,
        "p_case_id": job.case_id,
        "p_event_type": job.event_type,
        "p_now": now,
        **{f"p_{name}": value for name, value in more.items()},
    }


class KeptConnection:
    """An autocommit connection on PostgreSQL, taken from the pool when first needed and kept
    for run after run by whoever made it (one worker process's EffectRunner: not for threads
    to share): a checkout per run, its switch to autocommit and back, and the check-in cost a
    worker about a seventh of a job's CPU (bench/pipeline.py). Dropped after an error, so the
    next statement has a fresh connection (a server restart costs the statement it failed),
    and replaced once as old as the pool lets its connections grow."""

    def __init__(self, db: Engine) -> None:
        self._db = db
        self._conn: Connection | None = None
        self._since = 0.0

    def get(self) -> Connection:
        if self._conn is not None and time.monotonic() - self._since > POOL_RECYCLE:
            conn, self._conn = self._conn, None
            conn.close()  # idle between statements: back to the pool, which recycles it
        if self._conn is None:
            self._conn = self._db.connect().execution_options(isolation_level="AUTOCOMMIT")
            self._since = time.monotonic()
        return self._conn

    def drop(self) -> None:
        """After an error: the connection may be in the middle of a statement (a time limit
        interrupted its wait), so it is invalidated, not reset (a reset would fail on it)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with suppress(DBAPIError, psycopg.Error):
                conn.invalidate()


class SqlJobStore:
    """One instance per run (``EffectRunner`` builds one for each event or job), so it may
    remember what ``start`` learnt about the jobs.

    Round trips are what a job costs: statements stand alone in autocommit on PostgreSQL (no
    BEGIN/COMMIT around them). The task of a ``create_task`` job and the job's ``done`` are one
    statement there: if the worker dies while it runs, the server may still finish it, and then
    both writes happened together; a redelivery waits for the job row's lock and finds it done
    (the tasks' unique (source_event_id, kind) stands behind that)."""

    def __init__(
        self, db: Engine, *, hold_connection: bool = False, kept: KeptConnection | None = None
    ) -> None:
        self._db = db
        self._sql = _STATEMENTS[db.dialect.name]
        # Jobs whose row this store inserted: no earlier attempt, so nothing delivered yet.
        self._fresh: set[tuple[str, str]] = set()
        # PostgreSQL, for a caller that calls close() (hold_connection) or keeps a connection
        # for run after run (kept: a worker's EffectRunner): one autocommit connection, taken
        # from the pool once; a checkout and check-in per statement cost a sixth of a worker's
        # CPU (bench/pipeline.py).
        postgres = db.dialect.name == "postgresql"
        self._kept = (kept or (KeptConnection(db) if hold_connection else None)) if postgres else None
        self._owns = kept is None

    @contextmanager
    def _statements(self, write: bool = True) -> Iterator[Connection]:
        if self._kept is None:
            with autocommit(self._db, write) as conn:
                yield conn
            return
        try:
            yield self._kept.get()
        except BaseException:
            self._kept.drop()  # after an error, a fresh connection for the next statement
            raise

    def close(self) -> None:
        """Gives the run's connection back to the pool (one the store was given stays kept)."""
        if self._kept is not None and self._owns:
            self._kept.drop()

    def start(self, job: Job, now: datetime) -> tuple[str, int]:
        """One statement: inserts the job, or counts another attempt of an unfinished one."""
        key, params = (job.event_id, job.effect), _params(job, now)
        with self._statements() as conn:
            for _ in range(3):
                counted = execute_fixed(conn, self._sql.start, params).first()
                if counted is not None:
                    # Only the INSERT gives ("running", 1): an attempt counted on an existing row
                    # is its second at least, or keeps a replay's "pending" (attempts reset to 0).
                    if (counted.status, counted.attempts) == ("running", 1):
                        self._fresh.add(key)
                    else:
                        self._fresh.discard(key)
                    return counted.status, counted.attempts
                # The row is finished: a redelivery or a replay of a done (or dead) job.
                found = execute_fixed(conn, self._sql.status, params).first()
                if found is not None and found.status in FINISHED:
                    self._fresh.discard(key)
                    return found.status, found.attempts
                # Reopened by a replay between the two statements: count the attempt after all.
        raise RuntimeError(f"job {job.event_id}/{job.effect} keeps changing under start()")

    def close_tasks(self, job: Job, effect: Effect, now: datetime) -> int:
        """The case's open tasks of the kind that this event settles (``settleable``: made by
        earlier events, none settled by an event in between; a task a later event made, a new
        booking's or the next visit's, stays open however late this job runs), whichever office
        holds them (one the case was redirected from too), are settled with the job's done, in
        one transaction: cancelled by a CLOSE_TASKS effect, done by a COMPLETE_TASKS one (the
        event is the work they asked for). Running it again settles nothing more."""
        params = {**self._settle_params(job, effect), "p_now": now}
        settle = self._sql.settle[effect.kind]
        with writing(self._db) as conn:
            closed = conn.execute(settle, params, execution_options={"preserve_rowcount": True}).rowcount
            conn.execute(self._sql.finish, {**_params(job, now), "p_status": "done", "p_error": None})
        return int(closed)

    def settle_first(self, job: Job, effect: Effect, now: datetime) -> int | None:
        """PostgreSQL: ``close_tasks`` for a job whose message is on its first delivery, with
        the job's row written done in the same statement (no ``start`` before). None, having
        written nothing, when the job's row is there already; SQLite: always None."""
        if not self._sql.settle_first:
            return None
        params = {**self._settle_params(job, effect), **_params(job, now)}
        with self._statements() as conn:
            settled = execute_fixed(conn, self._sql.settle_first[effect.kind], params).first()
        return None if settled is None else int(settled[0])

    @staticmethod
    def _settle_params(job: Job, effect: Effect) -> dict[str, Any]:
        settlers = SETTLED_BY.get((effect.subject, effect.side), {})
        return {
            "p_case_id": job.case_id,
            "p_kind": effect.subject,
            "p_event_id": job.event_id,
            "p_settlers": [name for names in settlers.values() for name in names],
        }

    def create_task_first(self, job: Job, effect: Effect, now: datetime) -> bool:
        """PostgreSQL: the job's row, written done, and its task, in one statement (a round
        trip, a commit and a row version fewer than ``start`` then ``create_task_once``), for a
        job whose message is on its first delivery. False, having written nothing, when the
        job's row is there already (started or finished by another copy of the message) or the
        case is not: the caller starts the job as usual. SQLite: always False."""
        if not self._sql.task_first:
            return False
        key, params = self._task_params(job, effect, now)
        with self._statements() as conn:
            written = execute_fixed(conn, self._sql.task_first[(*key, effect.replaces)], params)
            return written.first() is not None

    def _task_params(
        self, job: Job, effect: Effect, now: datetime
    ) -> tuple[tuple[str, bool], dict[str, Any]]:
        """A task's statement (side, settle-checked) and its parameters."""
        # Due so many days after the event, not after the job ran: a worker that was down for a
        # day, or a dead letter replayed next week, does not move the office's deadline.
        due = None
        if effect.due_in_days:
            occurred = job.occurred_at or self._occurred_at(job.event_id) or now
            due = (occurred.astimezone(UTC) + timedelta(days=effect.due_in_days)).date()
        params = _params(job, now, task_id=str(uuid.uuid4()), kind=effect.subject, due_on=due)
        side = DESTINATION if effect.side == DESTINATION else "origin"
        settlers = SETTLED_BY.get((effect.subject, effect.side), {})
        if settlers:
            params["p_settlers"] = [name for names in settlers.values() for name in names]
            params["p_done"] = list(settlers.get("done", ()))
        return (side, bool(settlers)), params

    def create_task_once(self, job: Job, effect: Effect, now: datetime) -> None:
        """The task and the job's ``done`` atomically: one statement on PostgreSQL, one
        transaction of two on SQLite."""
        key, params = self._task_params(job, effect, now)
        finish = {**params, "p_status": "done", "p_error": None}
        if self._db.dialect.name == "postgresql":
            with self._statements() as conn:
                done = execute_fixed(conn, self._sql.task_and_finish[(*key, effect.replaces)], finish).first()
                if done is None and execute_fixed(conn, self._sql.status, params).scalar() != "done":
                    raise LookupError(f"case {job.case_id} not found for task {effect.subject}")
            return
        with writing(self._db) as conn:
            inserted = conn.execute(
                self._sql.task[key], params, execution_options={"preserve_rowcount": True}
            )
            if inserted.rowcount != 1:
                raise LookupError(f"case {job.case_id} not found for task {effect.subject}")
            if effect.replaces:
                conn.execute(self._sql.replace_prior, params)
            conn.execute(self._sql.finish, finish)

    def _occurred_at(self, event_id: str) -> datetime | None:
        """The event's commit time from its outbox row (a replayed job does not carry it)."""
        with self._statements(write=False) as conn:
            return conn.scalar(select(tb.outbox.c.occurred_at).where(tb.outbox.c.event_id == event_id))

    def delivered(self, job: Job) -> frozenset[str]:
        if (job.event_id, job.effect) in self._fresh:
            return frozenset()  # its first attempt: no query needed
        with self._statements(write=False) as conn:
            return frozenset(conn.scalars(self._sql.delivered, _params(job, datetime.min)))

    def record_delivery(self, job: Job, channel: str, now: datetime) -> None:
        with self._statements() as conn:
            conn.execute(self._sql.record, _params(job, now, channel=channel))

    def finish(
        self, job: Job, status: str, error: str | None, now: datetime, delivered: str | None = None
    ) -> None:
        """Marks the job finished; ``delivered`` names a channel whose send is recorded with it,
        in the same statement (PostgreSQL) or transaction (SQLite)."""
        params = _params(job, now, status=status, error=error, channel=delivered)
        if delivered is None:
            with self._statements() as conn:
                execute_fixed(conn, self._sql.finish, params)
        elif self._db.dialect.name == "postgresql":
            with self._statements() as conn:
                execute_fixed(conn, self._sql.record_and_finish, params)
        else:
            with writing(self._db) as conn:
                conn.execute(self._sql.record, params)
                conn.execute(self._sql.finish, params)

    def dead_letter(self, job: Job, error: str, now: datetime, attempts: int | None = None) -> None:
        made = {} if attempts is None else {"attempts": attempts}
        with writing(self._db) as conn:
            recorded = conn.execute(
                update(tb.jobs)
                # Only an unfinished job: a concurrent delivery that finished it stays done.
                .where(_key(job), j.status.in_(("running", "pending")))
                .values(status="dead", last_error=error, finished_at=now, **made)
                .returning(j.attempts)
            ).scalar()
            if recorded is None:
                if conn.scalar(select(j.status).where(_key(job))) is not None:
                    return  # already dead-lettered (file it once) or done by another delivery
                # Refused before it ever started (an effect this version does not know):
                # still filed, so the job is never lost without a trace.
                recorded = 0
                conn.execute(
                    insert(tb.jobs),
                    {
                        "event_id": job.event_id,
                        "effect": job.effect,
                        "case_id": job.case_id,
                        "event_type": job.event_type,
                        "status": "dead",
                        "attempts": recorded,
                        "last_error": error,
                        "started_at": now,
                        "finished_at": now,
                    },
                )
            conn.execute(
                insert(tb.dead_letters),
                {
                    "event_id": job.event_id,
                    "effect": job.effect,
                    "case_id": job.case_id,
                    "event_type": job.event_type,
                    "error": error,
                    "attempts": recorded,
                    "dead_at": now,
                },
            )


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: int
    event_id: str
    effect: str
    case_id: str
    event_type: str
    error: str
    attempts: int
    dead_at: datetime


dl = tb.dead_letters.c
_OPEN = select(
    dl.id, dl.event_id, dl.effect, dl.case_id, dl.event_type, dl.error, dl.attempts, dl.dead_at
).where(dl.replayed_at.is_(None))


class SqlDeadLetters:
    def __init__(self, db: Engine) -> None:
        self._db = db

    def open(self, limit: int = 1000) -> list[DeadLetter]:
        with self._db.connect() as conn:
            return [DeadLetter(*row) for row in conn.execute(_OPEN.order_by(dl.id).limit(limit))]

    def open_ids(self) -> list[int]:
        """Every open dead letter's id, oldest first: `avrr ops replay --all` replays them one at a time."""
        with self._db.connect() as conn:
            return list(conn.scalars(select(dl.id).where(dl.replayed_at.is_(None)).order_by(dl.id)))

    def replayed_at(self, ids: Iterable[int]) -> dict[int, datetime | None]:
        """Each of ``ids`` that names a dead letter, with when it was replayed (None: still open)."""
        with self._db.connect() as conn:
            rows = conn.execute(select(dl.id, dl.replayed_at).where(dl.id.in_(list(ids))))
            return {letter_id: replayed for letter_id, replayed in rows}

    def replay(self, ids: Iterable[int] | None, now: datetime, publish: Callable[[Job], None]) -> list[Job]:
        """Reopens each chosen dead letter with a fresh attempt budget and re-queues its job.

        The reopening and the publish share a transaction: if the broker refuses, nothing
        changes and the dead letter stays open. A replayed job whose effect already happened
        (say, a send that succeeded before its record failed) is recognised by its key. A letter
        whose job is done (filed while a late run of it was finishing) is closed without
        reopening the job: its effect happened, its message finds it done and does nothing,
        and a reopened task job would only fail again on the task it already made."""
        query = _OPEN.order_by(dl.id)
        if ids is not None:
            query = query.where(dl.id.in_(list(ids)))
        with writing(self._db) as conn:
            letters = [DeadLetter(*row) for row in conn.execute(query.with_for_update())]
            jobs: list[Job] = []
            for letter in letters:
                job = Job(letter.event_id, letter.event_type, letter.case_id, letter.effect)
                jobs.append(job)
                conn.execute(update(tb.dead_letters).where(dl.id == letter.id).values(replayed_at=now))
                if conn.scalar(select(tb.jobs.c.status).where(_key(job))) == "done":
                    log.info("dead_letter.job_done", event_id=job.event_id, effect=job.effect)
                    continue
                conn.execute(
                    update(tb.jobs).where(_key(job)).values(status="pending", attempts=0, finished_at=None)
                )
                # The event is watched again by that search, with a fresh budget of sends: should
                # the replay's message be lost, the event goes again.
                conn.execute(
                    update(tb.outbox)
                    .where(tb.outbox.c.event_id == job.event_id)
                    .values(settled_at=None, sent_at=now, attempts=1)
                )
            for job in jobs:
                publish(job)
        return jobs
