"""The transition service: the one path by which any case is created or moved."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import structlog

from workflow.domain.actors import Actor
from workflow.domain.case import Case
from workflow.domain.errors import (
    DomainError,
    GuardFailed,
    IdempotencyKeyReused,
    InvalidPayload,
    TimerVoid,
    UnknownCase,
    VersionConflict,
)
from workflow.domain.lifecycle import LIFECYCLE, LIFECYCLES
from workflow.domain.machine import Fired, can_see, held_by_package_elsewhere, machine_for
from workflow.domain.payloads import public_view
from workflow.domain.programme import FireContext, Programme
from workflow.service_layer.payloads import parse_payload
from workflow.service_layer.ports import (
    Clock,
    DuplicateIdempotencyKey,
    HistoryEntry,
    InboundDelivery,
    NoObserver,
    TransitionObserver,
    UnitOfWork,
)

log = structlog.get_logger(__name__)

REGISTER = next(t.trigger for t in LIFECYCLE.transitions if LIFECYCLE.initial in t.sources)
OPENING = frozenset(t.trigger for t in LIFECYCLE.transitions if LIFECYCLE.initial in t.sources)
# A trigger is the caller's text: outside this set it is observed as "unknown", so a metric's
# labels stay few whatever callers send.
TRIGGERS = frozenset(t.trigger for lifecycle in LIFECYCLES.values() for t in lifecycle.transitions)
MAX_ACTOR_ID, MAX_KEY = 120, 200  # the widths of their columns
REDIRECT = "redirect_handover"


@dataclass(frozen=True, slots=True)
class FireResult:
    case_id: str
    trigger: str
    from_state: str | None
    to_state: str
    version: int
    event_ids: tuple[str, ...]
    replayed: bool = False

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("replayed")
        data["event_ids"] = list(self.event_ids)
        return data

    @classmethod
    def replay(cls, data: Mapping[str, Any]) -> FireResult:
        return cls(**{**data, "event_ids": tuple(data["event_ids"]), "replayed": True})


@dataclass(frozen=True, slots=True)
class _Request:
    case_id: str | None
    trigger: str
    actor: Actor
    payload: Mapping[str, Any] | None
    expected_version: int | None
    idempotency_key: str | None
    request_id: str | None
    inbound: InboundDelivery | None = None  # a delivery from another deployment, recorded with the fire
    timer_id: str | None = None  # a deadline's timer, taken (marked fired) with the fire

    def digest(self) -> str:
        body = {
            "case_id": self.case_id,
            "trigger": self.trigger,
            # Roles and office too: a replay must not answer a caller who could not fire it.
            "actor": [self.actor.id, self.actor.office, sorted(self.actor.roles)],
            "payload": self.payload,
            "expected_version": self.expected_version,
        }
        try:
            canonical = json.dumps(body, sort_keys=True, default=str)
        except TypeError:  # not a JSON object (non-string keys): parse_payload refuses it later
            canonical = repr(body)
        return hashlib.sha256(canonical.encode()).hexdigest()


class TransitionService:
    def __init__(
        self,
        uow: Callable[[], UnitOfWork],
        programme: Programme,
        clock: Clock,
        observer: TransitionObserver | None = None,
    ) -> None:
        self._uow, self._programme, self._clock = uow, programme, clock
        self._observer = observer or NoObserver()

    def fire(
        self,
        case_id: str,
        trigger: str,
        actor: Actor,
        payload: Mapping[str, Any] | None = None,
        expected_version: int | None = None,
        idempotency_key: str | None = None,
        request_id: str | None = None,
        timer_id: str | None = None,
    ) -> FireResult:
        """``timer_id``: the fire of that deadline (the timer service's): it takes the timer in
        its transaction, and is refused with ``TimerVoid`` if the case's move cancelled it after
        beat claimed it, or if another deployment serves the case's owner office."""
        request = _Request(
            case_id, trigger, actor, payload, expected_version, idempotency_key, request_id, timer_id=timer_id
        )
        return self._run(request)

    def create_case(
        self,
        actor: Actor,
        payload: Mapping[str, Any],
        idempotency_key: str | None = None,
        request_id: str | None = None,
    ) -> FireResult:
        request = _Request(None, REGISTER, actor, payload, None, idempotency_key, request_id)
        return self._run(request)

    def receive(
        self,
        case_id: str,
        trigger: str,
        actor: Actor,
        payload: Mapping[str, Any] | None,
        delivery: InboundDelivery,
        request_id: str | None = None,
    ) -> FireResult:
        """A delivery from another deployment: ``trigger`` fired on ``case_id`` (a trigger that
        opens cases opens it with that id, the sender's) and the delivery recorded in the same
        transaction, so a redelivery finds it and a failed fire leaves no record."""
        return self._run(_Request(case_id, trigger, actor, payload, None, None, request_id, delivery))

    def _run(self, request: _Request) -> FireResult:
        with structlog.contextvars.bound_contextvars(
            case_id=request.case_id, trigger=request.trigger, request_id=request.request_id
        ):
            trigger = request.trigger if request.trigger in TRIGGERS else "unknown"
            try:
                result = self._run_deduplicated(request)
            except DomainError as error:
                log.info("case.fire_refused", error=error.code, actor_id=request.actor.id)
                self._observer.fired(trigger, error.code)
                raise
            except Exception:
                self._observer.fired(trigger, "error")
                raise
            self._observer.fired(trigger, "replayed" if result.replayed else "ok")
            return result

    def _run_deduplicated(self, request: _Request) -> FireResult:
        if len(request.actor.id) > MAX_ACTOR_ID or len(request.idempotency_key or "") > MAX_KEY:
            raise InvalidPayload("the actor id or the idempotency key is too long")
        digest = request.digest() if request.idempotency_key else ""
        try:
            return self._run_once(request, digest)
        except (DuplicateIdempotencyKey, VersionConflict):
            # A concurrent request with the same key may have committed first: answer as it did.
            if not request.idempotency_key:
                raise
            with self._uow() as uow:
                prior = _replay(uow, request.idempotency_key, digest)
            if prior is None:
                raise
            return prior

    def _run_once(self, request: _Request, digest: str) -> FireResult:
        with self._uow() as uow:
            key = request.idempotency_key
            if key and (prior := _replay(uow, key, digest)):
                return prior
            if request.inbound is not None:  # first: a concurrent redelivery waits on this row
                uow.inbound.add(request.inbound)
            case = self._load(uow, request)
            now = self._clock.now()
            # Before the fire's own writes, which may cancel the timer as the case leaves its state.
            if request.timer_id is not None:
                _take_timer(uow, request.timer_id, case, now)
            fired = self._apply(uow, case, request, FireContext(request.actor, now, self._programme))
            (uow.cases.add if fired.from_state == LIFECYCLE.initial else uow.cases.update)(case, now)
            uow.history.append(_history_entry(case, fired, request, now))
            uow.outbox.add(fired.events)
            result = FireResult(
                case.id,
                request.trigger,
                _real(fired.from_state),
                fired.to_state,
                case.version,
                tuple(e.event_id for e in fired.events),
            )
            if key:
                uow.idempotency.add(key, request.actor.id, digest, case.id, result.to_json(), now)
            uow.commit()
        log.info(
            "case.transitioned",
            case_id=case.id,
            trigger=request.trigger,
            from_state=result.from_state,
            to_state=result.to_state,
            version=result.version,
        )
        return result

    def _load(self, uow: UnitOfWork, request: _Request) -> Case:
        if request.case_id is None:
            return Case.new(LIFECYCLE.version)
        case = uow.cases.get(request.case_id, lock=request.timer_id is not None)
        if case is None and request.inbound is not None and request.trigger in OPENING:
            return Case.new(LIFECYCLE.version, request.case_id)
        # Another office's case answers as unknown, so ids cannot be probed.
        if case is None or not can_see(case, request.actor):
            raise UnknownCase(request.case_id)
        return case

    def _apply(self, uow: UnitOfWork, case: Case, request: _Request, ctx: FireContext) -> Fired:
        machine = machine_for(case.lifecycle_version)
        raw = request.payload if isinstance(request.payload, Mapping) else {}
        transition = machine.permit(case, request.trigger, request.actor, raw.get("origin_office"))
        if request.expected_version is not None and request.expected_version != case.version:
            raise VersionConflict(case.id, request.expected_version, case.version)
        machine.require_state(case, transition, request.actor)
        payload = parse_payload(transition.payload, request.payload)
        # A new case names both offices; a redirected handover its new destination.
        offices: tuple[str, ...] = (payload.origin_office, payload.destination_office) if case.is_new else ()
        if request.trigger == REDIRECT:
            offices = (payload.destination_office,)
        for office in offices:
            if not uow.cases.office_exists(office):
                raise InvalidPayload(f"unknown office {office!r}")
        if (
            held_by_package_elsewhere(request.trigger, case.state)
            and uow.inbound.served_here(case.destination_office) is False
        ):
            raise GuardFailed(
                request.trigger,
                [
                    f"the handover package is with office {case.destination_office}'s deployment: "
                    "it must refuse the handover before the case is closed here"
                ],
            )
        uow.cases.load_parts(case, transition.needs)
        return machine.fire(case, request.trigger, payload, ctx)


def _take_timer(uow: UnitOfWork, timer_id: str, case: Case, now: Any) -> None:
    """A deadline fires where the case's owner office is served: the origin's deployment until
    the destination accepts a handover, the destination's after. Both deployments hold a copy
    of a handed-over case, and each copy's moves arm the same deadlines; the other copy's are
    void (one escalation, from the deployment that owns the case)."""
    if uow.inbound.served_here(case.owner_office) is False:
        raise TimerVoid(timer_id, f"office {case.owner_office} is served by another deployment")
    if not uow.timers.take(timer_id, case.id, now):
        raise TimerVoid(timer_id, "no longer pending")


def _replay(uow: UnitOfWork, key: str, digest: str) -> FireResult | None:
    prior = uow.idempotency.get(key)
    if prior is None:
        return None
    if prior.request_hash != digest:
        raise IdempotencyKeyReused(key)
    return FireResult.replay(prior.response)


def _real(state: str) -> str | None:
    return None if state == LIFECYCLE.initial else state


def _history_entry(case: Case, fired: Fired, request: _Request, now: Any) -> HistoryEntry:
    return HistoryEntry(
        case_id=case.id,
        version=case.version,
        trigger=request.trigger,
        from_state=_real(fired.from_state),
        to_state=fired.to_state,
        actor_id=request.actor.id,
        actor_office=request.actor.office,
        reason=getattr(fired.payload, "reason", None) or None,
        payload=public_view(fired.payload),
        request_id=request.request_id,
        lifecycle_version=case.lifecycle_version,
        occurred_at=now,
    )
