"""Wires settings, the database and the services together for an entry point."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Engine

from config.settings import Settings, get_settings
from workflow.adapters.clock import SystemClock
from workflow.adapters.db import make_engine
from workflow.adapters.unit_of_work import SqlUnitOfWork
from workflow.adapters.views import CaseViews
from workflow.domain.programme import Programme
from workflow.service_layer.ports import Clock
from workflow.service_layer.transitions import TransitionService


def programme_from(settings: Settings) -> Programme:
    return Programme(
        allow_cash=settings.allow_cash,
        handover_ack_period=timedelta(days=settings.handover_ack_days),
        returnee_contact_period=timedelta(days=settings.returnee_contact_days),
        plan_drafting_period=timedelta(days=settings.plan_drafting_days),
        monitoring_interval=timedelta(days=settings.monitoring_interval_days),
    )


@dataclass(frozen=True)
class App:
    """Everything an entry point needs; built once per process."""

    db: Engine
    transitions: TransitionService
    views: CaseViews

    def uow(self) -> SqlUnitOfWork:
        return SqlUnitOfWork(self.db)


def bootstrap(settings: Settings | None = None, clock: Clock | None = None, db: Engine | None = None) -> App:
    settings = settings or get_settings()
    db = db or make_engine(
        settings.database_url, pool_size=settings.db_pool_size, pre_ping=settings.db_pre_ping
    )
    service = TransitionService(lambda: SqlUnitOfWork(db), programme_from(settings), clock or SystemClock())
    return App(db=db, transitions=service, views=CaseViews(db))
