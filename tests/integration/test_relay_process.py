"""`python -m workers.relay` as a process: it logs as the engine's other processes do."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.integration.processes import spawn, stop, wait_for


def test_the_relay_module_logs_json_lines_at_the_settings_level(pg_url: str, tmp_path: Path) -> None:
    log = tmp_path / "relay.log"
    env = {
        "AVRR_DATABASE_URL": pg_url,
        "AVRR_BROKER_URL": "redis://127.0.0.1:6379/13",
        "AVRR_LOG_JSON": "true",
        "AVRR_LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
    }
    relay = spawn([sys.executable, "-m", "workers.relay"], log, env)
    try:
        wait_for(lambda: "relay.started" in log.read_text(), 30, "the relay's first line")
    finally:
        assert stop(relay) in (0, -15)
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # structlog's console renderer would not parse
    assert records[0]["event"] == "relay.started"
    assert records[0]["level"] == "info" and records[0]["database"] == "postgresql"
    assert all(record["level"] != "debug" for record in records)
