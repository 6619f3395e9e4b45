"""Runs one effect of one event, once, however often the job is delivered."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import structlog

from workflow.domain.effects import CREATE_TASK, Effect, effect_named, effects_of
from workflow.service_layer.ports import Clock

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Job:
    event_id: str
    event_type: str
    case_id: str
    effect: str


class JobStore(Protocol):
    def start(self, job: Job, now: datetime) -> tuple[str, int]:
        """Counts an attempt (committed at once, so a crash still counts); returns status, attempts."""
        ...

    def create_task_once(self, job: Job, effect: Effect, now: datetime) -> None:
        """Writes the task and marks the job done in one transaction."""
        ...

    def finish(self, job: Job, status: str, error: str | None, now: datetime) -> None: ...


class UnknownEffect(Exception):
    """A job names an effect the lifecycle's effect table does not have."""


class EffectRunner:
    def __init__(self, jobs: Callable[[], JobStore], clock: Clock, max_attempts: int) -> None:
        self._jobs, self._clock, self._max_attempts = jobs, clock, max_attempts

    def run(self, job: Job) -> str:
        effect = effect_named(job.event_type, job.effect)
        if effect is None:
            raise UnknownEffect(job.effect)
        store = self._jobs()
        status, attempts = store.start(job, self._clock.now())
        if status in ("done", "dead"):
            return status  # a redelivery or a replay of a finished job does nothing
        if attempts > self._max_attempts:
            store.finish(job, "dead", f"gave up after {attempts - 1} attempts", self._clock.now())
            log.warning("job.dead_lettered", event_id=job.event_id, effect=job.effect, attempts=attempts)
            return "dead"
        if effect.kind == CREATE_TASK:
            store.create_task_once(job, effect, self._clock.now())
        else:
            raise UnknownEffect(effect.kind)
        log.info("job.done", event_id=job.event_id, case_id=job.case_id, effect=job.effect)
        return "done"


RUNNABLE_KINDS = frozenset({CREATE_TASK})


def runnable_effects(event_type: str) -> tuple[Effect, ...]:
    """The effects the workers carry out so far (notifications and the handover webhook follow)."""
    return tuple(e for e in effects_of(event_type) if e.kind in RUNNABLE_KINDS)
