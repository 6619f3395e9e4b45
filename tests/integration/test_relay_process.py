"""`python -m workers.relay` as a process: it logs as the engine's other processes do."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from sqlalchemy import func, select

from tests.integration.processes import RedisServer, spawn, stop, wait_for
from tests.support import advance_to
from workflow.adapters import tables as tb
from workflow.bootstrap import App


def _unsent(app: App) -> int:
    with app.db.connect() as conn:
        query = select(func.count()).select_from(tb.outbox).where(tb.outbox.c.sent_at.is_(None))
        return int(conn.scalar(query) or 0)


def test_the_relay_module_logs_json_lines_at_the_settings_level(
    pg_app: App, pg_url: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    advance_to(pg_app, "application_submitted")  # rows for the relay's rounds (debug lines)
    assert _unsent(pg_app) > 0
    log = tmp_path / "relay.log"
    env = {
        "AVRR_DATABASE_URL": pg_url,
        "AVRR_BROKER_URL": redis_server.url(),
        "AVRR_LOG_JSON": "true",
        "AVRR_LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
    }
    relay = spawn([sys.executable, "-m", "workers.relay"], log, env)
    try:
        wait_for(lambda: _unsent(pg_app) == 0, 30, "the relay to send every row")
    finally:
        assert stop(relay) in (0, -15)
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # structlog's console renderer would not parse
    assert records[0]["event"] == "relay.started"
    assert records[0]["level"] == "info" and records[0]["database"] == "postgresql"
    assert all(record["level"] != "debug" for record in records)  # outbox.relayed is below INFO
