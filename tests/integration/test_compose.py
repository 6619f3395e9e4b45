"""docker-compose.yml is exercised without Docker: each avrr service's command runs here for real."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import create_engine, inspect

from workflow.adapters import tables as tb

ROOT = Path(__file__).resolve().parents[2]
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
AVRR_SERVICES = {
    name: spec for name, spec in COMPOSE["services"].items() if spec.get("image") == "avrr-workflow:local"
}


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


@pytest.mark.postgres
@pytest.mark.parametrize("service", sorted(AVRR_SERVICES))
def test_each_avrr_service_command_runs_against_local_postgres(service: str, pg_url: str) -> None:
    spec = AVRR_SERVICES[service]
    env = os.environ | {
        key: value for key, value in spec["environment"].items() if not str(value).startswith("$")
    }
    env |= {
        "AVRR_DATABASE_URL": pg_url,
        "AVRR_SECRET_KEY": "s" * 40,
        "AVRR_BROKER_URL": "redis://127.0.0.1:6379/0",
    }
    assert env["AVRR_ENVIRONMENT"] == "production"

    run = subprocess.run(
        [sys.executable, "-m", "workflow", *spec["command"]],
        env=env,
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
