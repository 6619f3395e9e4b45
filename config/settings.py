"""All settings from the environment (AVRR_ prefix), refusing unsafe defaults outside development."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_SECRET = "dev-only-secret-change-me"  # noqa: S105 - refused outside development
DEFAULT_DATABASE_URL = "sqlite:///./var/avrr.sqlite3"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AVRR_", env_file=".env", extra="ignore")

    environment: Literal["development", "test", "production"] = "development"
    database_url: str = DEFAULT_DATABASE_URL
    broker_url: str | None = None
    secret_key: SecretStr = SecretStr(DEV_SECRET)
    log_level: str = "INFO"
    log_json: bool | None = None  # default: console in development, JSON elsewhere
    db_pool_size: int = 10
    db_pre_ping: bool = False  # see workflow/adapters/db.py: make_engine

    # Programme rules (DOMAIN.md): cash is off unless the programme turns it on.
    allow_cash: bool = False
    handover_ack_days: int = 5
    returnee_contact_days: int = 90
    plan_drafting_days: int = 30
    monitoring_interval_days: int = 90

    @model_validator(mode="after")
    def _refuse_unsafe_defaults(self) -> Settings:
        if self.environment == "development":
            return self
        problems = []
        if self.secret_key.get_secret_value() in (DEV_SECRET, "", "changethis"):
            problems.append("AVRR_SECRET_KEY must be set to a real secret")
        if len(self.secret_key.get_secret_value()) < 32:
            problems.append("AVRR_SECRET_KEY must be at least 32 characters")
        if self.environment == "production" and self.database_url.startswith("sqlite"):
            problems.append("AVRR_DATABASE_URL must point at PostgreSQL in production")
        if problems:
            raise ValueError(f"unsafe settings for {self.environment}: " + "; ".join(problems))
        return self

    @property
    def json_logs(self) -> bool:
        return self.log_json if self.log_json is not None else self.environment != "development"


@lru_cache
def get_settings() -> Settings:
    return Settings()
