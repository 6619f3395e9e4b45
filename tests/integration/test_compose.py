"""docker-compose.yml is exercised without Docker: each avrr service's command runs here for real,
and each long-running one must pass its own compose health check, translated to run locally."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from sqlalchemy import create_engine, inspect

from tests.conftest import REQUIRE_SERVICES
from workflow.adapters import tables as tb

ROOT = Path(__file__).resolve().parents[2]
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
AVRR_SERVICES = {
    name: spec for name, spec in COMPOSE["services"].items() if spec.get("image") == "avrr-workflow:local"
}
ONE_SHOT = {name for name, spec in AVRR_SERVICES.items() if spec["restart"] == "no"}
LONG_RUNNING = sorted(set(AVRR_SERVICES) - ONE_SHOT)
REDIS_URL = os.environ.get("AVRR_TEST_COMPOSE_REDIS_URL", "redis://127.0.0.1:6379/12")
FLOWER_AUTH = "ops:flower-test-password"
AVRR = [sys.executable, "-m", "workflow"]  # the image's ENTRYPOINT ["avrr"]


def test_compose_declares_the_backing_services_with_health_checks_and_volumes() -> None:
    services = COMPOSE["services"]
    assert {"postgres", "redis", "migrate"} <= set(services)
    for name in ("postgres", "redis"):
        assert services[name]["healthcheck"]["test"], name
        assert services[name]["restart"] == "unless-stopped"
        assert any(":" in volume for volume in services[name]["volumes"])
    redis = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis and "--maxmemory-policy noeviction" in redis
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["migrate"]["restart"] == "no"


def test_compose_declares_the_processes_restarting_after_migrate_with_health_checks() -> None:
    assert {"api", "worker", "beat", "relay", "flower"} <= set(LONG_RUNNING)
    for name in LONG_RUNNING:
        spec = AVRR_SERVICES[name]
        assert spec["restart"] == "unless-stopped", name
        assert spec["healthcheck"]["test"][:2] == ["CMD", "avrr"], name
        assert spec["depends_on"]["redis"]["condition"] == "service_healthy", name
        if name != "flower":  # Flower watches the broker only
            assert spec["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name
            assert spec["depends_on"]["postgres"]["condition"] == "service_healthy", name
    for name in ("worker", "beat"):  # their state (schedule, SMS sink) is in a named volume
        volume = AVRR_SERVICES[name]["volumes"][0].split(":")[0]
        assert volume in COMPOSE["volumes"], name
    for name in ("api", "flower"):  # published on the host's loopback only
        assert all(port.startswith("127.0.0.1:") for port in AVRR_SERVICES[name]["ports"]), name
    api = AVRR_SERVICES["api"]
    assert api["command"][:1] == ["serve"] and "0.0.0.0" in api["command"]
    assert api["ports"] == ["127.0.0.1:8000:8000"]  # `avrr serve`'s default port
    assert "FLOWER_BASIC_AUTH" in (ROOT / ".env.example").read_text()


def test_the_image_holds_every_package_the_services_run() -> None:
    copied = set(re.findall(r"^COPY (\w+) ", (ROOT / "Dockerfile").read_text(), flags=re.MULTILINE))
    assert {"workflow", "workers", "config", "migrations"} <= copied


def _env(spec: dict[str, Any], pg_url: str, tmp_path: Path) -> dict[str, str]:
    env = os.environ | {
        key: value for key, value in spec["environment"].items() if not str(value).startswith("$")
    }
    env |= {
        "AVRR_DATABASE_URL": pg_url,
        "AVRR_SECRET_KEY": "s" * 40,
        "AVRR_BROKER_URL": REDIS_URL,
        "AVRR_LOG_LEVEL": "WARNING",
        "FLOWER_BASIC_AUTH": FLOWER_AUTH,
        "FLOWER_PORT": str(_free_port()),
        "AVRR_API_PORT": str(_free_port()),  # the api service's port, for its command and its check
        "AVRR_WORKER_METRICS_PORT": str(_free_port()),  # the worker's, on loopback here
        "AVRR_WORKER_METRICS_ADDRESS": "127.0.0.1",
        "HOME": str(tmp_path),
    }
    assert env["AVRR_ENVIRONMENT"] == "production"
    return env


def _local(argv: list[str], tmp_path: Path) -> list[str]:
    """A container's argv run here: `avrr` is this interpreter, its /tmp is the test's directory."""
    argv = [str(tmp_path / a.removeprefix("/tmp/")) if a.startswith("/tmp/") else a for a in argv]
    return [*AVRR, *argv[1:]] if argv[0] == "avrr" else [*AVRR, *argv]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def broker() -> str:
    try:
        redis.Redis.from_url(REDIS_URL).flushdb()
    except redis.ConnectionError as exc:
        (pytest.fail if REQUIRE_SERVICES else pytest.skip)(f"Redis at {REDIS_URL} unreachable: {exc}")
    return REDIS_URL


@pytest.mark.postgres
@pytest.mark.parametrize("service", sorted(ONE_SHOT))
def test_each_one_shot_service_command_runs_against_local_postgres(
    service: str, pg_url: str, broker: str, tmp_path: Path
) -> None:
    spec = AVRR_SERVICES[service]
    run = subprocess.run(
        _local(spec["command"], tmp_path),
        env=_env(spec, pg_url, tmp_path),
        cwd=ROOT,  # the image's WORKDIR holds alembic.ini and migrations/
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert run.returncode == 0, run.stderr
    if service == "migrate":
        engine = create_engine(pg_url)
        assert {t.name for t in tb.metadata.sorted_tables} <= set(inspect(engine).get_table_names())
        engine.dispose()


@pytest.fixture
def started(request: pytest.FixtureRequest, pg_url: str, broker: str, tmp_path: Path) -> Iterator[Any]:
    """Starts a long-running service's command line; SIGTERM at the end, which it must obey cleanly."""
    spec = AVRR_SERVICES[request.param]
    env = _env(spec, pg_url, tmp_path)
    log = (tmp_path / f"{request.param}.log").open("w+")
    proc = subprocess.Popen(
        _local(spec["command"], tmp_path), cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        yield request.param, spec, env, proc, log
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = None
        log.seek(0)
        output = log.read()[-3000:]
        log.close()
    assert code == 0, f"{request.param} did not stop cleanly on SIGTERM ({code}):\n{output}"


def _healthcheck(
    spec: dict[str, Any], env: dict[str, str], tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    test = spec["healthcheck"]["test"]
    assert test[0] == "CMD"
    return subprocess.run(
        _local(test[1:], tmp_path),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.postgres
@pytest.mark.parametrize("started", LONG_RUNNING, indirect=True)
def test_each_process_starts_and_passes_its_compose_health_check(started: Any, tmp_path: Path) -> None:
    service, spec, env, proc, log = started
    deadline = time.monotonic() + 25
    check = _healthcheck(spec, env, tmp_path)
    while check.returncode != 0:
        log.seek(0)
        assert proc.poll() is None, f"{service} exited with {proc.returncode}:\n{log.read()[-3000:]}"
        assert time.monotonic() < deadline, f"{service} never healthy: {check.stdout}{check.stderr}"
        time.sleep(0.5)
        check = _healthcheck(spec, env, tmp_path)
    assert "healthy" in check.stdout

    if service == "flower":
        url = f"http://127.0.0.1:{env['FLOWER_PORT']}/"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=10)
        assert refused.value.code == 401
        token = base64.b64encode(FLOWER_AUTH.encode()).decode()
        request = urllib.request.Request(url, headers={"Authorization": f"Basic {token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200

    if service == "api":  # readiness reaches the database, the broker and the relay; cases need a token
        base = f"http://127.0.0.1:{env['AVRR_API_PORT']}"
        with urllib.request.urlopen(f"{base}/health/ready", timeout=10) as response:
            checks = {"database": "ok", "relay": "ok", "broker": "ok"}
            assert json.load(response) == {"status": "ok", "checks": checks}
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{base}/cases/00000000-0000-0000-0000-000000000000", timeout=10)
        assert refused.value.code == 401


@pytest.mark.parametrize("service", ["relay", "beat"])
def test_a_heartbeat_check_fails_when_the_process_is_not_running(service: str, tmp_path: Path) -> None:
    spec = AVRR_SERVICES[service]
    env = os.environ | {"AVRR_ENVIRONMENT": "development"}
    check = _healthcheck(spec, env, tmp_path)
    assert check.returncode == 1
    assert "unhealthy" in check.stderr


def test_the_api_check_fails_when_nothing_answers(tmp_path: Path) -> None:
    env = os.environ | {"AVRR_ENVIRONMENT": "development", "AVRR_API_PORT": str(_free_port())}
    check = _healthcheck(AVRR_SERVICES["api"], env, tmp_path)
    assert check.returncode == 1
    assert "unhealthy" in check.stderr


def test_flower_refuses_to_start_without_authentication(tmp_path: Path) -> None:
    env = os.environ | {"AVRR_ENVIRONMENT": "development"}
    env.pop("FLOWER_BASIC_AUTH", None)
    env.pop("FLOWER_AUTH", None)
    run = subprocess.run(
        _local(AVRR_SERVICES["flower"]["command"], tmp_path),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 2
    assert "FLOWER_BASIC_AUTH" in run.stderr


def test_production_settings_refuse_the_development_secret(tmp_path: Path) -> None:
    env = os.environ | {"AVRR_ENVIRONMENT": "production", "AVRR_DATABASE_URL": "postgresql+psycopg://x@h/db"}
    env.pop("AVRR_SECRET_KEY", None)
    run = subprocess.run(
        [sys.executable, "-m", "workflow", "db", "upgrade"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert run.returncode != 0
    assert "AVRR_SECRET_KEY" in run.stderr
