"""Liveness and readiness: the database, the broker (a private redis-server stopped and started
again) and the relay's lag each turn readiness off and on."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import update

from config.settings import Settings
from tests.api.conftest import api_client, bearer, token_for
from tests.integration.processes import RedisServer
from tests.support import FixedClock, register
from workflow.adapters import tables as tb
from workflow.bootstrap import App, bootstrap
from workflow.domain.actors import Role


def test_live_answers_without_a_token(app: App) -> None:
    with api_client(app) as api:
        response = api.get("/health/live")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_ready_follows_the_broker_stopped_and_started_again(app: App, redis_server: RedisServer) -> None:
    case_id = register(app).case_id
    auth = bearer(token_for(app, "tll-caseworker", "tallinn", Role.CASEWORKER))
    with api_client(app, broker_url=redis_server.url()) as api:
        first = api.get("/health/ready")
        assert first.status_code == 200, first.text
        assert first.json() == {"status": "ok", "checks": {"database": "ok", "relay": "ok", "broker": "ok"}}

        redis_server.stop()
        down = api.get("/health/ready")
        assert down.status_code == 503
        assert down.json()["status"] == "unavailable"
        assert down.json()["checks"]["broker"].startswith("failed: ")
        assert down.json()["checks"]["database"] == "ok"
        assert "127.0.0.1" not in down.text  # the error's class only, not its message
        # Unready, yet serving: the rate limits (counted in Redis) fall back to this process.
        assert api.get(f"/cases/{case_id}", headers=auth).status_code == 200
        assert api.get("/cases", headers={"Authorization": "Bearer avrr_wrong"}).status_code == 401

        redis_server.start()
        back = api.get("/health/ready")
        assert back.status_code == 200, back.text
        assert back.json()["checks"]["broker"] == "ok"


def test_ready_turns_off_while_the_relay_lags_and_on_when_it_caught_up(app: App, clock: FixedClock) -> None:
    case_id = register(app).case_id
    with api_client(app, ready_max_outbox_age_seconds=60) as api:
        clock.advance(seconds=59)
        assert api.get("/health/ready").status_code == 200
        clock.advance(seconds=2)
        lagging = api.get("/health/ready")
        assert lagging.status_code == 503
        assert lagging.json()["checks"]["relay"].startswith("lagging: oldest unsent event 61 s old")
        assert lagging.json()["checks"]["database"] == "ok"

        with app.db.begin() as conn:
            conn.execute(update(tb.outbox).where(tb.outbox.c.case_id == case_id).values(sent_at=clock.now()))
        caught_up = api.get("/health/ready")
        assert caught_up.status_code == 200, caught_up.text
        assert caught_up.json()["checks"]["relay"] == "ok"


def test_ready_says_the_database_failed_without_its_message(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-directory" / "avrr.sqlite3"  # SQLite cannot create it
    settings = Settings(database_url=f"sqlite:///{missing}", environment="test", secret_key="x" * 40)
    broken = bootstrap(settings, clock=FixedClock())
    with api_client(broken) as api:
        response = api.get("/health/ready")
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["database"].startswith("failed: ")
    assert checks["relay"] == "unknown: no database"
    assert "no-such-directory" not in response.text
