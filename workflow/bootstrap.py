"""Wires settings, the database and the services together for an entry point."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from config.settings import Settings, get_settings
from workflow.adapters.channels.sms import FileSinkSms, HttpSmsGateway
from workflow.adapters.channels.smtp import SmtpChannel
from workflow.adapters.channels.webhook import WebhookChannel
from workflow.adapters.clock import SystemClock
from workflow.adapters.db import make_engine
from workflow.adapters.jobs import KeptConnection, SqlJobStore
from workflow.adapters.notices import SqlFacts
from workflow.adapters.tasks import SqlTasks
from workflow.adapters.templates import default_templates
from workflow.adapters.timers import SqlTimerStore
from workflow.adapters.unit_of_work import SqlUnitOfWork
from workflow.adapters.views import CaseViews
from workflow.domain.programme import Programme
from workflow.service_layer.effects import EffectRunner
from workflow.service_layer.notifications import EMAIL, SMS, WEBHOOK, Channel
from workflow.service_layer.ports import Clock
from workflow.service_layer.tasks import TaskService
from workflow.service_layer.timers import TimerService
from workflow.service_layer.transitions import TransitionService

if TYPE_CHECKING:
    from workflow.adapters.metrics import PrometheusObserver


def programme_from(settings: Settings) -> Programme:
    return Programme(
        allow_cash=settings.allow_cash,
        handover_ack_period=timedelta(days=settings.handover_ack_days),
        returnee_contact_period=timedelta(days=settings.returnee_contact_days),
        plan_drafting_period=timedelta(days=settings.plan_drafting_days),
        monitoring_interval=timedelta(days=settings.monitoring_interval_days),
        departure_reminder_lead=timedelta(days=settings.departure_reminder_days),
    )


@dataclass(frozen=True)
class App:
    """Everything an entry point needs; built once per process."""

    db: Engine
    transitions: TransitionService
    views: CaseViews
    timers: TimerService
    tasks: TaskService
    clock: Clock = field(default_factory=SystemClock)

    def uow(self) -> SqlUnitOfWork:
        return SqlUnitOfWork(self.db)


def bootstrap(settings: Settings | None = None, clock: Clock | None = None, db: Engine | None = None) -> App:
    settings = settings or get_settings()
    db = db or make_engine(
        settings.database_url, pool_size=settings.db_pool_size, pre_ping=settings.db_pre_ping
    )
    clock = clock or SystemClock()
    service = TransitionService(lambda: SqlUnitOfWork(db), programme_from(settings), clock, _observer())
    timers = TimerService(SqlTimerStore(db), service, clock)
    tasks = TaskService(SqlTasks(db), clock)
    return App(db=db, transitions=service, views=CaseViews(db), timers=timers, tasks=tasks, clock=clock)


def channels_from(settings: Settings) -> dict[str, Channel]:
    """E-mail over SMTP, SMS through the gateway (a file sink by default), signed webhooks."""
    password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
    channels: dict[str, Channel] = {
        EMAIL: SmtpChannel(
            settings.smtp_host,
            settings.smtp_port,
            settings.smtp_from,
            settings.smtp_username,
            password,
            settings.smtp_starttls,
        ),
        SMS: HttpSmsGateway(settings.sms_gateway_url)
        if settings.sms_gateway_url
        else FileSinkSms(Path(settings.sms_sink)),
    }
    if settings.webhook_secret is not None:  # no secret: a handover to another deployment dead-letters
        channels[WEBHOOK] = WebhookChannel(settings.webhook_secret)
    return channels


def effect_runner(db: Engine, max_attempts: int, settings: Settings | None = None) -> EffectRunner:
    """One per process (a worker's): its job stores share one kept database connection."""
    settings = settings or get_settings()
    return EffectRunner(
        partial(SqlJobStore, db, kept=KeptConnection(db)),
        SystemClock(),
        max_attempts,
        facts=SqlFacts(db, programme_from(settings).returnee_contact_period),
        channels=channels_from(settings),
        renderer=default_templates(),
        observer=_observer(),
    )


def _observer() -> PrometheusObserver:
    # Imported here, not at the top: prometheus_client chooses its multiprocess mode from
    # PROMETHEUS_MULTIPROC_DIR when first imported, and `avrr serve` and `avrr worker` set it
    # after the `avrr` command (which imports this module) has started.
    from workflow.adapters.metrics import PrometheusObserver

    return PrometheusObserver()
