"""The access log: every refused attempt and every read of a case's personal data."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Engine, insert

from workflow.adapters import tables as tb
from workflow.adapters.db import writing


class SqlAccessLog:
    def __init__(self, db: Engine) -> None:
        self._db = db

    def record(
        self,
        now: datetime,
        action: str,
        outcome: str,
        actor_id: str | None = None,
        office: str | None = None,
        case_id: str | None = None,
        request_id: str | None = None,
    ) -> None:
        with writing(self._db) as conn:
            conn.execute(
                insert(tb.access_log),
                {
                    "at": now,
                    "actor_id": actor_id[:120] if actor_id else None,
                    "office": office,
                    # An id longer than any case id names no case (and would not fit).
                    "case_id": case_id if case_id and len(case_id) <= tb.ID_LENGTH else None,
                    "action": action[:64],
                    "request_id": request_id[:64] if request_id else None,
                    "outcome": outcome[:48],
                },
            )
