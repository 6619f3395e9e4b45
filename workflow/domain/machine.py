"""Binds a Lifecycle to one shared `transitions` Machine and fires triggers on cases.

The Machine is built once per lifecycle version with ``model=None``. A fire
runs it on a short-lived ``_Firing`` object, so nothing is ever attached to
the case (viewflow's rule: only a transition moves the state).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, time
from functools import cache
from typing import Any

from transitions import EventData, Machine

from workflow.domain.actors import Actor, Role
from workflow.domain.case import Case
from workflow.domain.changes import Change, TimersCancelled, TimerStarted
from workflow.domain.errors import (
    GuardFailed,
    PermissionDenied,
    TransitionNotAllowed,
    UnknownTrigger,
)
from workflow.domain.events import Event
from workflow.domain.lifecycle import DESTINATION, LIFECYCLES, Lifecycle, Transition
from workflow.domain.programme import FireContext
from workflow.domain.records import Timer


class _Firing:
    """The model the shared Machine moves; lives for one fire only."""

    __slots__ = ("case", "ctx", "effect", "fsm_state", "payload")

    def __init__(self, case: Case, payload: Any, ctx: FireContext, effect: str | None) -> None:
        self.fsm_state = case.state
        self.case, self.payload, self.ctx, self.effect = case, payload, ctx, effect


def _apply_effect(event: EventData) -> None:
    firing = event.model
    assert isinstance(firing, _Firing)
    if firing.effect:
        recorded = getattr(firing.case, firing.effect)(firing.payload, firing.ctx)
        if recorded is not None:  # the payload completed with what the case knew, for history
            firing.payload = recorded


@dataclass(frozen=True, slots=True)
class Fired:
    """What one fire did, for the unit of work to persist."""

    transition: Transition
    from_state: str
    to_state: str
    events: tuple[Event, ...]
    payload: Any


class LifecycleMachine:
    def __init__(self, lifecycle: Lifecycle) -> None:
        self.lifecycle = lifecycle
        self._machine = Machine(
            model=None,
            states=[lifecycle.initial, *lifecycle.by_state],
            initial=lifecycle.initial,
            auto_transitions=False,
            send_event=True,
            model_attribute="fsm_state",
        )
        for t in lifecycle.transitions:
            self._machine.add_transition(t.trigger, list(t.sources), t.dest, before=_apply_effect)

    def transition(self, trigger: str) -> Transition:
        try:
            return self.lifecycle.by_trigger[trigger]
        except KeyError:
            raise UnknownTrigger(trigger, list(self.lifecycle.by_trigger)) from None

    def permit(self, case: Case, trigger: str, actor: Actor, registering_office: str | None) -> Transition:
        """Role and office first: a caller learns nothing about a case it may not act on."""
        t = self.transition(trigger)
        if not may_fire(t, case, actor, registering_office):
            raise PermissionDenied(f"{actor.id} may not {trigger} on this case")
        return t

    def require_state(self, case: Case, t: Transition, actor: Actor) -> None:
        if case.state not in t.sources:
            raise TransitionNotAllowed(t.trigger, case.state, self.triggers_for(case, actor))

    def check(self, case: Case, trigger: str, payload: Any, ctx: FireContext) -> Transition:
        """Every refusal a fire can meet, in the order a caller should learn of them."""
        t = self.permit(case, trigger, ctx.actor, getattr(payload, "origin_office", None))
        self.require_state(case, t, ctx.actor)
        reasons = [reason for guard in t.guards for reason in guard(case, payload, ctx)]
        if reasons:
            raise GuardFailed(trigger, reasons)
        return t

    def fire(self, case: Case, trigger: str, payload: Any, ctx: FireContext) -> Fired:
        t = self.check(case, trigger, payload, ctx)
        source = case.state
        firing = _Firing(case, payload, ctx, t.effect)
        self._machine.events[trigger].trigger(firing)
        case._enter(firing.fsm_state, ctx.now)
        if t.shares:
            case._share(ctx.now)
        self._rearm_timers(case, t, source, ctx)
        from_state = None if source == self.lifecycle.initial else source
        data = {"trigger": trigger, "from_state": from_state, "to_state": case.state}
        events = tuple(
            Event(str(uuid.uuid4()), name, case.id, case.version, ctx.now, data) for name in t.events
        )
        return Fired(t, source, case.state, events, firing.payload)

    def triggers_for(self, case: Case, actor: Actor, package_elsewhere: bool = False) -> tuple[str, ...]:
        """The triggers this actor could fire now (guards aside); ``package_elsewhere``: the
        case's handover package is with another deployment (``held_by_package_elsewhere``)."""
        return tuple(
            trigger
            for trigger in self.lifecycle.allowed_triggers(case.state)
            if may_fire(self.lifecycle.by_trigger[trigger], case, actor)
            and not (package_elsewhere and held_by_package_elsewhere(trigger, case.state))
        )

    def _rearm_timers(self, case: Case, t: Transition, source: str, ctx: FireContext) -> None:
        if source == case.state and not t.restart_timers:
            return
        changes: list[Change] = []
        if source in self.lifecycle.by_state and self.lifecycle.by_state[source].deadlines:
            changes.append(TimersCancelled(source))
        for d in self.lifecycle.by_state[case.state].deadlines:
            start = getattr(case, d.counted_from) if d.counted_from else None
            base = datetime.combine(start, time(), UTC) if start else ctx.now
            due_at = base + getattr(ctx.programme, d.period)
            changes.append(
                TimerStarted(Timer(str(uuid.uuid4()), d.name, case.state, due_at, d.fires, ctx.now))
            )
        case.changes.extend(changes)


# Refused while the case's handover package is with the destination office's own deployment:
# its copy there could still accept the package, and the two copies would disagree (that
# deployment refuses the handover first, which returns the case to arrived).
_HELD_BY_PACKAGE_ELSEWHERE = frozenset({("close_without_handover", "handover_pending")})
PACKAGE_STATES = frozenset(state for _, state in _HELD_BY_PACKAGE_ELSEWHERE)  # where it matters


def held_by_package_elsewhere(trigger: str, state: str) -> bool:
    """The trigger is refused in this state while the destination office is served by another
    deployment (the service checks where it is served; the case's trigger list leaves it out)."""
    return (trigger, state) in _HELD_BY_PACKAGE_ELSEWHERE


def can_see(case: Case, actor: Actor) -> bool:
    """Staff see their office's cases and those handed to or from it; the timers see all. The
    destination office sees a case only once it is shared with it (``Transition.shares``: from
    the travel booking, or a handover received from another deployment); before, it is unknown
    to it as to any other office. The owner is always one of the two offices, and the
    destination owns a case only after a handover, so long after it was shared.
    ``workflow.adapters.queries.visible_to`` says the same in SQL."""
    if actor.office is None:
        return Role.SYSTEM in actor.roles
    if case.is_new or actor.office == case.origin_office:
        return True
    return actor.office == case.destination_office and case.shared_at is not None


def may_fire(t: Transition, case: Case, actor: Actor, registering_office: str | None = None) -> bool:
    """Role named by the lifecycle, from an office on the side the transition belongs to."""
    if not actor.roles & t.roles:
        return False
    if actor.office is None:  # the timers: only what the lifecycle gives to the system alone
        return Role.SYSTEM in actor.roles and t.roles == {Role.SYSTEM}
    if case.is_new:  # registration: the office is the one the case is being opened in
        return registering_office is None or registering_office == actor.office
    offices = {case.destination_office if side == DESTINATION else case.origin_office for side in t.sides}
    return actor.office in offices


@cache
def machine_for(version: str) -> LifecycleMachine:
    """One Machine per lifecycle version, shared by every case and request."""
    return LifecycleMachine(LIFECYCLES[version])
