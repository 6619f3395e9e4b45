"""`python -m workers.relay` as a process: it logs as the engine's other processes do."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from sqlalchemy import func, select, text

from tests.integration.processes import RedisServer, queued_jobs, spawn, start_relay, stop, wait_for
from tests.servers import silent_proxy
from tests.support import advance_to, register
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


def _listening(app: App) -> list[int]:
    """The relay's LISTEN sessions on this database (its Waker's connection)."""
    with app.db.connect() as conn:
        return list(
            conn.scalars(
                text(
                    "SELECT pid FROM pg_stat_activity"
                    " WHERE datname = current_database() AND query LIKE 'LISTEN %'"
                )
            )
        )


def test_a_relay_whose_listen_session_the_server_ends_goes_on_and_listens_again(
    pg_app: App, pg_url: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    """PostgreSQL ends the relay's LISTEN session (a restart, an idle-session timeout, an
    operator's pg_terminate_backend): the relay keeps running, relays what is committed after,
    and opens a new LISTEN session."""
    log = tmp_path / "relay.log"
    relay = start_relay(pg_url, redis_server.url(), log, interval=1.0)
    try:
        register(pg_app)
        wait_for(lambda: _unsent(pg_app) == 0, 30, "the relay to send the first row")
        (first,) = wait_for(lambda: _listening(pg_app), 10, "the relay's LISTEN session")
        with pg_app.db.connect() as conn:
            assert conn.scalar(select(func.pg_terminate_backend(first)))
        register(pg_app)
        wait_for(lambda: _unsent(pg_app) == 0, 30, "the relay to send the row committed after")
        (second,) = wait_for(lambda: [pid for pid in _listening(pg_app) if pid != first], 10, "a new LISTEN")
        assert relay.poll() is None, "the relay exited"
    finally:
        stop(relay)
    text_ = log.read_text(errors="replace")
    assert "relay.listen_lost" in text_ and second != first


def test_a_relay_whose_redis_goes_silent_gives_up_the_batch_and_sends_it_once_redis_answers(
    pg_app: App, pg_url: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    """The Redis host stops answering without a reset (a partition, a lost VM): the relay's
    publish fails after the broker socket timeout instead of waiting for the kernel (about 15
    minutes) with its rows locked; the transaction rolls back, the transitions committed
    meanwhile wait unsent, and each goes out once when Redis answers again. No worker runs:
    the queue shows what was published."""
    log = tmp_path / "relay.log"
    with silent_proxy(redis_server.port) as proxy:
        patch = "app.conf.update(celery_config(broker_url, broker_socket_timeout=2))"
        relay = start_relay(pg_url, f"redis://127.0.0.1:{proxy.port}/0", log, interval=0.5, patch=patch)
        try:
            first = register(pg_app).event_ids
            wait_for(lambda: _unsent(pg_app) == 0, 30, "the relay to send the first row")
            proxy.silent = True
            later = [event for _ in range(3) for event in register(pg_app).event_ids]
            wait_for(lambda: "relay.unavailable" in log.read_text(errors="replace"), 30, "a publish to fail")
            assert _unsent(pg_app) == 3 and relay.poll() is None
            proxy.silent = False
            wait_for(lambda: _unsent(pg_app) == 0, 60, "the relay to send the rows once Redis answers")
        finally:
            stop(relay)
    published = Counter(args[0] for args in queued_jobs(redis_server.client()))
    assert published == Counter({event: 1 for event in (*first, *later)})
