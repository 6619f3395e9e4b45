"""Beat's task: fire the timers that fell due (rows in the database, never broker ETAs)."""

from __future__ import annotations

from functools import cache

from celery.exceptions import SoftTimeLimitExceeded

from config.settings import get_settings
from workers.app import app
from workflow.bootstrap import bootstrap
from workflow.service_layer.timers import TimerService


@cache
def _timers() -> TimerService:
    """Built lazily, so each forked worker process opens its own database pool."""
    return bootstrap().timers


# No retries: the next tick is the retry, and a timer that failed is claimed again after its lease.
@app.task(name="avrr.timers.fire_due")
def fire_due() -> dict[str, int]:
    limit = get_settings().timer_batch_size
    return _timers().fire_due(limit=limit, stop_on=(SoftTimeLimitExceeded,)).to_json()
