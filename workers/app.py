"""The Celery app, configured from config/ (broker from AVRR_BROKER_URL, or files under ./var)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from celery import Celery, signals

from config.celery import celery_config
from config.logging import configure_logging
from config.settings import get_settings
from workers import metrics

DATA_DIR = Path("var")


def make_celery() -> Celery:
    settings = get_settings()
    config = celery_config(
        settings.broker_url, DATA_DIR, settings.timer_poll_seconds, settings.broker_socket_timeout
    )
    for key in ("data_folder_in", "processed_folder", "control_folder"):
        if key in config["broker_transport_options"]:
            Path(config["broker_transport_options"][key]).mkdir(parents=True, exist_ok=True)
    app = Celery("avrr")
    app.conf.update(config)
    app.conf.imports = ("workers.tasks", "workers.noop", "workers.timers")
    metrics.install(app)
    return app


@signals.setup_logging.connect
def _logging(**_: Any) -> None:
    settings = get_settings()
    configure_logging(json=settings.json_logs, level=settings.log_level)


app = make_celery()
