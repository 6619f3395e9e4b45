"""All settings from the environment (AVRR_ prefix), refusing unsafe defaults outside development."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_SECRET = "dev-only-secret-change-me"  # noqa: S105 - refused outside development
DEFAULT_DATABASE_URL = "sqlite:///./var/avrr.sqlite3"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AVRR_", env_file=".env", extra="ignore")

    environment: Literal["development", "test", "production"] = "development"
    database_url: str = DEFAULT_DATABASE_URL
    broker_url: str | None = None
    # Seconds a Redis command may go unanswered (config/celery.py); above a worker's 1 s BRPOP.
    broker_socket_timeout: float = Field(default=30.0, ge=5, le=300)
    secret_key: SecretStr = SecretStr(DEV_SECRET)
    log_level: str = "INFO"
    log_json: bool | None = None  # default: console in development, JSON elsewhere
    db_pool_size: int = 10
    db_pre_ping: bool = False  # see workflow/adapters/db.py: make_engine

    # Notifications: e-mail over SMTP, SMS through a gateway (a file sink unless a URL is set),
    # handover packages as webhooks signed with the secret the two deployments share.
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 1025
    smtp_from: str = "avrr@localhost"
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = False
    sms_gateway_url: str | None = None
    sms_sink: str = "var/sms.jsonl"
    # Needed only to hand cases to another deployment; without it such a handover dead-letters.
    handover_secret: SecretStr | None = None

    @property
    def webhook_secret(self) -> str | None:
        if self.handover_secret is not None:
            return self.handover_secret.get_secret_value()
        return DEV_SECRET if self.environment == "development" else None

    # Programme rules (DOMAIN.md): cash is off unless the programme turns it on.
    allow_cash: bool = False
    handover_ack_days: int = 5
    returnee_contact_days: int = 90
    plan_drafting_days: int = 30
    monitoring_interval_days: int = 90
    departure_reminder_days: int = Field(default=2, ge=0)  # the family is reminded this long before

    # A transient failure's first retry waits 0.5-1 times this, each next one twice as long, at
    # most 120 s (workers/tasks.py: backoff).
    retry_base_seconds: float = Field(default=15.0, gt=0, le=120)

    # Timers: deadline rows in the database that beat claims when due (never broker ETAs).
    timer_poll_seconds: float = Field(default=10.0, gt=0)
    timer_batch_size: int = Field(default=100, gt=0)

    # The relay publishes again an event sent this long ago whose jobs have neither all finished
    # nor started since (its message was lost: a broker that lost what it held, a worker that did
    # not know the task). Above the longest quiet spell of a live event: a retry's backoff
    # (120 s) plus the hard time limit (90 s) plus the queue's wait.
    redeliver_after_seconds: float = Field(default=900.0, gt=0)
    # The least time between the relay's rounds (workers/relay.py LINGER): under load a round
    # gathers the commits of this long, in as few messages as hold them (throughput, at the cost
    # of latency); 0, the default, sends each commit at once.
    relay_linger_ms: float = Field(default=0.0, ge=0, le=1000)

    # Readiness (GET /health/ready): unready when the oldest committed event still waiting for
    # the relay is older than this; the relay hands events over within a second when it runs.
    ready_max_outbox_age_seconds: float = Field(default=60.0, gt=0)

    # HTTP API: API tokens always; OIDC/JWT bearer tokens when an issuer is set. Algorithms are
    # pinned (never taken from the token's header); the key comes from the JWKS URL or a PEM.
    api_token_days: int = Field(default=90, gt=0)
    oidc_issuer: str | None = None
    oidc_audience: str | None = None
    oidc_algorithms: list[str] = ["RS256"]
    oidc_jwks_url: str | None = None
    oidc_public_key: str | None = None
    oidc_office_claim: str = "avrr_office"
    oidc_roles_claim: str = "avrr_roles"
    # Rate limits ("N/period", the `limits` notation): failed token checks per client address,
    # and money requests per actor. Counted in Redis when a broker URL is set, else per process.
    rate_limit_auth_failures: str = "20/minute"
    rate_limit_money: str = "60/minute"
    api_workers: int = Field(default=2, gt=0)

    # Prometheus: GET /metrics needs this bearer token when it is set (scrapers usually have none,
    # and the figures say nothing about persons). A worker serves its own processes' metrics on
    # this port when it is set (`avrr worker --metrics-port`).
    metrics_token: SecretStr | None = None
    worker_metrics_port: int | None = Field(default=None, ge=0, le=65535)
    worker_metrics_address: str = "127.0.0.1"

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
