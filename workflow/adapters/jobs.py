"""The workers' job rows: attempts, outcome and the inbox key that makes effects happen once."""

from __future__ import annotations

import uuid
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

    def finish(self, job: Job, status: str, error: str | None, now: datetime) -> None:
        with writing(self._db) as conn:
            self._finish(conn, job, status, error, now)

    @staticmethod
    def _finish(conn: Connection, job: Job, status: str, error: str | None, now: datetime) -> None:
        conn.execute(
            update(tb.jobs).where(_key(job)).values(status=status, last_error=error, finished_at=now)
        )
