"""A worker's job stores share one kept PostgreSQL connection, run after run, and take a fresh
one after an error (a server that ended the session costs the statement it failed, no more)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from tests.support import register
from workflow.adapters.jobs import KeptConnection, SqlJobStore
from workflow.bootstrap import App
from workflow.service_layer.effects import Job

NOW = datetime(2026, 12, 7, tzinfo=UTC)


def _job(app: App, effect: str) -> Job:
    result = register(app)
    return Job(result.event_ids[0], "InquiryRegistered", result.case_id, effect)


def _backend(kept: KeptConnection) -> int:
    pid: int = kept.get().scalar(text("SELECT pg_backend_pid()"))
    return pid


def test_stores_of_one_runner_share_its_kept_connection(pg_app: App) -> None:
    kept = KeptConnection(pg_app.db)
    first = SqlJobStore(pg_app.db, kept=kept)
    assert first.start(_job(pg_app, "a"), NOW) == ("running", 1)
    pid = _backend(kept)
    first.close()  # the run ends; the connection stays kept
    second = SqlJobStore(pg_app.db, kept=kept)
    assert second.start(_job(pg_app, "b"), NOW) == ("running", 1)
    assert _backend(kept) == pid
    second.close()
    # A store that was not given one takes its own and gives it back when its run ends.
    own = SqlJobStore(pg_app.db, hold_connection=True)
    assert own.start(_job(pg_app, "c"), NOW) == ("running", 1)
    own.close()
    assert _backend(kept) == pid


def test_after_an_error_the_next_statement_has_a_fresh_connection(pg_app: App) -> None:
    kept = KeptConnection(pg_app.db)
    store = SqlJobStore(pg_app.db, kept=kept)
    job = _job(pg_app, "a")
    assert store.start(job, NOW) == ("running", 1)
    pid = _backend(kept)
    with pg_app.db.connect() as other:  # as a server restart would end the session
        assert other.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    with pytest.raises(DBAPIError):
        store.start(job, NOW)
    assert store.start(job, NOW) == ("running", 2)  # the failed start did not count
    assert _backend(kept) != pid
