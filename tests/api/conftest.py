"""HTTP API fixtures: a TestClient over the test app (SQLite and PostgreSQL), tokens per office."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from config.settings import Settings
from workflow.adapters.tokens import SqlTokens
from workflow.api.app import create_app
from workflow.bootstrap import App
from workflow.domain.actors import Role


def api_settings(app: App, **overrides: Any) -> Settings:
    """Test settings on the app's database; no broker (unless given), so rate limits count in memory."""
    given: dict[str, Any] = {"broker_url": None, **overrides}
    return Settings(
        database_url=app.db.url.render_as_string(hide_password=False),
        environment="test",
        secret_key="x" * 40,
        **given,
    )


def api_client(app: App, **overrides: Any) -> TestClient:
    """A client over ``create_app(app)``; use it as a context manager."""
    return TestClient(create_app(app, api_settings(app, **overrides)))


@pytest.fixture
def api(app: App) -> Iterator[TestClient]:
    """The API over the ``app`` fixture: runs once on SQLite and once on PostgreSQL."""
    with api_client(app) as client:
        yield client


def token_for(app: App, actor_id: str, office: str | None, *roles: Role | str) -> str:
    """A fresh API token for this actor, office and roles, valid a year by the app's clock (tests move it)."""
    token, _ = SqlTokens(app.db).create(
        f"test {actor_id}", actor_id, office, [Role(r) for r in roles], timedelta(days=365), app.clock.now()
    )
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
