"""The workers' job rows: attempts, outcome and the inbox key that makes effects happen once."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, Connection, Engine, and_, insert, select, update
from sqlalchemy.exc import IntegrityError

from workflow.adapters import tables as tb
from workflow.adapters.db import writing
from workflow.domain.effects import Effect
from workflow.domain.lifecycle import DESTINATION
from workflow.service_layer.effects import Job

j = tb.jobs.c


def _key(job: Job) -> ColumnElement[bool]:
    return and_(j.event_id == job.event_id, j.effect == job.effect)


class SqlJobStore:
    def __init__(self, db: Engine) -> None:
        self._db = db

    def start(self, job: Job, now: datetime) -> tuple[str, int]:
        with writing(self._db) as conn:
            row = conn.execute(select(j.status, j.attempts).where(_key(job)).with_for_update()).first()
            if row is None:
                try:
                    with conn.begin_nested():
                        conn.execute(
                            insert(tb.jobs),
                            {
                                "event_id": job.event_id,
                                "effect": job.effect,
                                "case_id": job.case_id,
                                "event_type": job.event_type,
                                "status": "running",
                                "attempts": 1,
                                "started_at": now,
                            },
                        )
                    return "running", 1
                except IntegrityError:  # another delivery of the same job got there first
                    row = conn.execute(select(j.status, j.attempts).where(_key(job))).one()
            if row.status in ("done", "dead"):
                return row.status, row.attempts
            conn.execute(update(tb.jobs).where(_key(job)).values(attempts=j.attempts + 1, started_at=now))
            return row.status, row.attempts + 1

    def create_task_once(self, job: Job, effect: Effect, now: datetime) -> None:
        with writing(self._db) as conn:
            case = conn.execute(
                select(tb.cases.c.origin_office, tb.cases.c.destination_office).where(
                    tb.cases.c.id == job.case_id
                )
            ).one()
            office = case.destination_office if effect.side == DESTINATION else case.origin_office
            due = (now + timedelta(days=effect.due_in_days)).date() if effect.due_in_days else None
            conn.execute(
                insert(tb.tasks),
                {
                    "id": str(uuid.uuid4()),
                    "case_id": job.case_id,
                    "kind": effect.subject,
                    "status": "open",
                    "office": office,
                    "due_on": due,
                    "source_event_id": job.event_id,
                    "created_at": now,
                },
            )
            self._finish(conn, job, "done", None, now)

    def delivered(self, job: Job) -> frozenset[str]:
        d = tb.deliveries.c
        with self._db.connect() as conn:
            query = select(d.channel).where(d.event_id == job.event_id, d.effect == job.effect)
            return frozenset(conn.scalars(query))

    def record_delivery(self, job: Job, channel: str, now: datetime) -> None:
        with writing(self._db) as conn:
            conn.execute(
                insert(tb.deliveries),
                {"event_id": job.event_id, "effect": job.effect, "channel": channel, "delivered_at": now},
            )

    def finish(self, job: Job, status: str, error: str | None, now: datetime) -> None:
        with writing(self._db) as conn:
            self._finish(conn, job, status, error, now)

    def dead_letter(self, job: Job, error: str, now: datetime) -> None:
        with writing(self._db) as conn:
            attempts = conn.execute(
                update(tb.jobs)
                # Only an unfinished job: a concurrent delivery that finished it stays done.
                .where(_key(job), j.status.in_(("running", "pending")))
                .values(status="dead", last_error=error, finished_at=now)
                .returning(j.attempts)
            ).scalar()
            if attempts is None:
                if conn.scalar(select(j.status).where(_key(job))) is not None:
                    return  # already dead-lettered (file it once) or done by another delivery
                # Refused before it ever started (an effect this version does not know):
                # still filed, so the job is never lost without a trace.
                attempts = 0
                conn.execute(
                    insert(tb.jobs),
                    {
                        "event_id": job.event_id,
                        "effect": job.effect,
                        "case_id": job.case_id,
                        "event_type": job.event_type,
                        "status": "dead",
                        "attempts": attempts,
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
                    "attempts": attempts,
                    "dead_at": now,
                },
            )

    @staticmethod
    def _finish(conn: Connection, job: Job, status: str, error: str | None, now: datetime) -> None:
        conn.execute(
            update(tb.jobs).where(_key(job)).values(status=status, last_error=error, finished_at=now)
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

    def replay(self, ids: Iterable[int] | None, now: datetime, publish: Callable[[Job], None]) -> list[Job]:
        """Reopens each chosen dead letter with a fresh attempt budget and re-queues its job.

        The reopening and the publish share a transaction: if the broker refuses, nothing
        changes and the dead letter stays open. A replayed job whose effect already happened
        (say, a send that succeeded before its record failed) is recognised by its key."""
        query = _OPEN.order_by(dl.id)
        if ids is not None:
            query = query.where(dl.id.in_(list(ids)))
        with writing(self._db) as conn:
            letters = [DeadLetter(*row) for row in conn.execute(query.with_for_update())]
            jobs = [Job(d.event_id, d.event_type, d.case_id, d.effect) for d in letters]
            for letter, job in zip(letters, jobs, strict=True):
                conn.execute(update(tb.dead_letters).where(dl.id == letter.id).values(replayed_at=now))
                conn.execute(
                    update(tb.jobs).where(_key(job)).values(status="pending", attempts=0, finished_at=None)
                )
            for job in jobs:
                publish(job)
        return jobs
