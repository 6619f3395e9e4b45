"""Databases for the tests: a migrated SQLite file per test, and a private PostgreSQL database per run."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from config.settings import Settings
from tests.integration.processes import RedisServer
from tests.support import FixedClock
from workflow.adapters import tables as tb
from workflow.adapters.db import make_engine
from workflow.adapters.migrate import upgrade
from workflow.adapters.views import ensure_office
from workflow.bootstrap import App, bootstrap

# Worker processes the tests start retry a transient failure after about a second (15 s in
# production), so a test of retries and dead letters takes seconds, not minutes.
os.environ.setdefault("AVRR_RETRY_BASE_SECONDS", "1")
POSTGRES_ADMIN_URL = os.environ.get(
    "AVRR_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REQUIRE_SERVICES = os.environ.get("AVRR_REQUIRE_SERVICES") == "1"
OFFICES = (("tallinn", "IOM Tallinn", "EE"), ("kyiv", "IOM Kyiv", "UA"), ("riga", "IOM Riga", "LV"))


def _postgres_available() -> str | None:
    try:
        engine = create_engine(POSTGRES_ADMIN_URL, connect_args={"connect_timeout": 3})
        with engine.connect():
            pass
        engine.dispose()
        return None
    except Exception as exc:
        return f"PostgreSQL at {make_url(POSTGRES_ADMIN_URL).render_as_string()} unreachable: {exc}"


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "avrr.sqlite3"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_url(worker_id: str) -> Iterator[str]:
    problem = _postgres_available()
    if problem:
        if REQUIRE_SERVICES:
            pytest.fail(problem)
        pytest.skip(problem)
    name = f"avrr_test_{worker_id}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    upgrade(url)
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> str:
    if request.param == "sqlite":
        path = tmp_path / "avrr.sqlite3"
        shutil.copy(sqlite_template, path)
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("postgres_url")
    _truncate(url)
    return url


@pytest.fixture
def pg_url(postgres_url: str) -> str:
    """PostgreSQL only: for the tests of row locks and concurrent writers."""
    _truncate(postgres_url)
    return postgres_url


def _truncate(url: str) -> None:
    engine = create_engine(url)
    names = ", ".join(t.name for t in tb.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock()


def make_app(url: str, clock: FixedClock, **overrides: object) -> App:
    settings = Settings(database_url=url, environment="test", secret_key="x" * 40, **overrides)  # type: ignore[arg-type]
    app = bootstrap(settings, clock=clock, db=make_engine(url, pool_size=25))
    for office in OFFICES:
        ensure_office(app.db, *office)
    return app


@pytest.fixture
def app(db_url: str, clock: FixedClock) -> Iterator[App]:
    app = make_app(db_url, clock)
    yield app
    app.db.dispose()


@pytest.fixture
def pg_app(pg_url: str, clock: FixedClock) -> Iterator[App]:
    app = make_app(pg_url, clock)
    yield app
    app.db.dispose()


@pytest.fixture(scope="session")
def worker_id(request: pytest.FixtureRequest) -> str:
    """pytest-xdist's worker id, or 'main' without xdist."""
    return getattr(request.config, "workerinput", {}).get("workerid", "main")


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, on a free port: a shared database number would let
    another run's workers take this run's messages (and this run's workers theirs)."""
    if shutil.which("redis-server") is None:
        (pytest.fail if REQUIRE_SERVICES else pytest.skip)("redis-server is not installed")
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database of its own, for walking the migrations."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/migrated.sqlite3"
        return
    request.getfixturevalue("postgres_url")  # skips when PostgreSQL is not there
    name = f"avrr_test_migrated_{uuid.uuid4().hex[:8]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()
