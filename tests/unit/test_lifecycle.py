"""The lifecycle table, checked edge by edge: moves, refusals, authorization, graph shape, names."""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections import deque
from datetime import timedelta

import pytest

from tests.unit.builders import (
    OFFICE_ON,
    SAMPLE_PAYLOADS,
    STRANGER_OFFICE,
    actor_for,
    case_for,
    case_in,
    ctx,
    first_role,
    machine,
    payload_for,
    snapshot,
)
from workflow.domain import guards as g
from workflow.domain import payloads as p
from workflow.domain.actors import SYSTEM_ACTOR, Actor, Role
from workflow.domain.case import Case
from workflow.domain.errors import PermissionDenied, TransitionNotAllowed, UnknownTrigger
from workflow.domain.lifecycle import DESTINATION, LIFECYCLE, ORIGIN, SAME
from workflow.domain.machine import may_fire
from workflow.domain.programme import Programme

EDGES = list(LIFECYCLE.edges())
STATES = [LIFECYCLE.initial, *LIFECYCLE.by_state]
TRANSITIONS = LIFECYCLE.transitions
FINAL = {s.name for s in LIFECYCLE.states if s.final}


EDGE_ROLES = [
    pytest.param(source, t, target, role, id=f"{source}-{t.trigger}->{target}-by-{role.value}")
    for source, t, target in EDGES
    for role in sorted(t.roles)
]
NOT_IN_TABLE = [
    pytest.param(state, t, id=f"{state}-{t.trigger}")
    for state in STATES
    for t in TRANSITIONS
    if state not in t.sources
]
ROLES_OF = [
    pytest.param(t, role, id=f"{t.trigger}-by-{role.value}")
    for t in TRANSITIONS
    for role in sorted(t.roles)
    if role is not Role.SYSTEM
]
BY_TRIGGER = [pytest.param(t, id=t.trigger) for t in TRANSITIONS]


@pytest.mark.parametrize(("source", "t", "target", "role"), EDGE_ROLES)
def test_each_edge_moves_a_case_holding_only_its_needs_to_the_target_and_emits_the_events(
    source, t, target, role
):
    case = case_for(t, source, version=7)
    actor = actor_for(t, role)

    fired = machine().fire(case, t.trigger, payload_for(t), ctx(actor))

    assert case.state == target == fired.to_state
    assert fired.from_state == source
    assert case.version == 8
    assert [e.event_type for e in fired.events] == list(t.events)
    assert {(e.case_id, e.case_version) for e in fired.events} == {(case.id, 8)}
    from_state = None if source == LIFECYCLE.initial else source  # events name no pseudo-state
    assert all(
        e.data == {"trigger": t.trigger, "from_state": from_state, "to_state": target} for e in fired.events
    )
    assert len({e.event_id for e in fired.events}) == len(fired.events)


@pytest.mark.parametrize(("state", "t"), NOT_IN_TABLE)
def test_a_trigger_not_in_the_table_for_a_state_is_refused_with_the_allowed_triggers(state, t):
    case = case_in(state)
    before = snapshot(case)

    actor = actor_for(t, first_role(t))
    with pytest.raises(TransitionNotAllowed) as refused:
        machine().fire(case, t.trigger, payload_for(t), ctx(actor))

    assert refused.value.state == state
    assert refused.value.trigger == t.trigger
    # Only what this actor could fire: the refusal tells nobody more than their own options.
    assert refused.value.allowed == machine().triggers_for(case, actor)
    assert set(refused.value.allowed) <= set(LIFECYCLE.allowed_triggers(state))
    assert t.trigger not in refused.value.allowed
    assert snapshot(case) == before


def test_an_unknown_trigger_is_refused_naming_the_known_ones():
    with pytest.raises(UnknownTrigger) as refused:
        machine().fire(case_in("inquiry"), "fly_to_the_moon", None, ctx(SYSTEM_ACTOR))
    assert set(refused.value.known) == set(LIFECYCLE.by_trigger)


@pytest.mark.parametrize("t", BY_TRIGGER)
def test_every_transition_refuses_an_actor_without_any_of_its_roles(t):
    other_roles = set(Role) - t.roles
    for source in t.sources:
        case = case_in(source, parts=t.needs)
        before = snapshot(case)
        for side in t.sides:
            actor = Actor(f"outsider@{side}", OFFICE_ON[side], frozenset(other_roles))
            with pytest.raises(PermissionDenied):
                machine().fire(case, t.trigger, payload_for(t), ctx(actor))
        assert snapshot(case) == before


@pytest.mark.parametrize(("t", "role"), ROLES_OF)
def test_every_transition_refuses_a_right_role_from_an_office_not_on_its_side(t, role):
    actor = actor_for(t, role, office=STRANGER_OFFICE)
    for source in t.sources:
        case = case_in(source, parts=t.needs)
        before = snapshot(case)
        with pytest.raises(PermissionDenied):
            machine().fire(case, t.trigger, payload_for(t), ctx(actor))
        assert snapshot(case) == before


@pytest.mark.parametrize(("t", "role"), ROLES_OF)
def test_every_transition_admits_its_roles_from_each_of_its_sides(t, role):
    for source in t.sources:
        for side in t.sides:
            actor = Actor.of(f"{role.value}@{side}", OFFICE_ON[side], role)
            assert may_fire(t, case_in(source), actor, getattr(payload_for(t), "origin_office", None))


@pytest.mark.parametrize("t", BY_TRIGGER)
def test_the_office_less_timer_actor_may_fire_only_the_systems_own_transitions(t):
    for source in t.sources:
        case = case_in(source, parts=t.needs)
        if t.roles == {Role.SYSTEM}:
            machine().fire(case, t.trigger, payload_for(t), ctx(SYSTEM_ACTOR))
            assert case.state == t.target(source)
        else:
            with pytest.raises(PermissionDenied):
                machine().fire(case, t.trigger, payload_for(t), ctx(SYSTEM_ACTOR))
            assert case.state == source


@pytest.mark.parametrize(("t", "role"), ROLES_OF)
def test_another_offices_automation_is_held_to_the_office_rule(t, role):
    automation = Actor("automation@riga", STRANGER_OFFICE, frozenset({Role.SYSTEM, role}))
    for source in t.sources:
        registering = getattr(payload_for(t), "origin_office", None)
        assert not may_fire(t, case_in(source), automation, registering)


@pytest.mark.parametrize("state", STATES)
def test_triggers_for_an_actor_are_the_allowed_triggers_their_roles_and_office_permit(state):
    case = case_in(state)
    allowed = set(LIFECYCLE.allowed_triggers(state))
    for role in Role:
        for office in ("tallinn", "kyiv", STRANGER_OFFICE):
            actor = SYSTEM_ACTOR if role is Role.SYSTEM else Actor.of("someone", office, role)
            offered = set(machine().triggers_for(case, actor))
            assert offered <= allowed
            for trigger in offered:
                assert role in LIFECYCLE.by_trigger[trigger].roles


def test_registration_is_fired_from_the_office_the_case_is_opened_in():
    register = LIFECYCLE.by_trigger["register_inquiry"]
    payload = payload_for(register).origin_office
    assert may_fire(register, Case.new(LIFECYCLE.version), Actor.of("a", "tallinn", Role.CASEWORKER), payload)
    assert not may_fire(
        register, Case.new(LIFECYCLE.version), Actor.of("a", "kyiv", Role.CASEWORKER), payload
    )


@pytest.mark.parametrize("state", sorted(FINAL))
def test_final_states_have_no_outgoing_triggers(state):
    assert LIFECYCLE.allowed_triggers(state) == ()
    assert not [edge for edge in EDGES if edge[0] == state]


def _reachable(start: str, forward: bool) -> set[str]:
    step = {}
    for source, _, target in EDGES:
        a, b = (source, target) if forward else (target, source)
        step.setdefault(a, set()).add(b)
    seen, todo = {start}, deque([start])
    while todo:
        for nxt in step.get(todo.popleft(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


@pytest.mark.parametrize("state", [s.name for s in LIFECYCLE.states if not s.final])
def test_every_state_is_reachable_from_new_and_can_reach_a_final_state(state):
    assert state in _reachable(LIFECYCLE.initial, forward=True)
    assert _reachable(state, forward=True) & FINAL


def test_the_table_names_only_its_own_states_and_each_trigger_once():
    names = set(LIFECYCLE.by_state)
    assert len(LIFECYCLE.by_trigger) == len(TRANSITIONS)
    assert LIFECYCLE.initial not in names
    for t in TRANSITIONS:
        assert t.roles, t.trigger
        assert set(t.sources) <= {LIFECYCLE.initial, *names}, t.trigger
        assert t.dest == SAME or t.dest in names, t.trigger
        assert set(t.sides) <= {ORIGIN, DESTINATION}, t.trigger
        assert t.needs <= {"members", "plan"}, t.trigger
        assert not t.restart_timers or t.dest == SAME, t.trigger


DEADLINES = [pytest.param(s, d, id=f"{s.name}-{d.name}") for s in LIFECYCLE.states for d in s.deadlines]


@pytest.mark.parametrize(("state", "deadline"), DEADLINES)
def test_every_deadline_fires_a_trigger_allowed_from_the_state_holding_it(state, deadline):
    assert deadline.fires in LIFECYCLE.by_trigger
    assert deadline.fires in LIFECYCLE.allowed_triggers(state.name)
    # The timers fire as SYSTEM_ACTOR, which may fire only what the lifecycle gives the system alone.
    assert LIFECYCLE.by_trigger[deadline.fires].roles == {Role.SYSTEM}
    assert isinstance(getattr(Programme(), deadline.period), timedelta)
    assert deadline.counted_from is None or deadline.counted_from in Case.__slots__


@pytest.mark.parametrize("t", BY_TRIGGER)
def test_every_transition_names_a_payload_class_an_effect_and_guards_that_exist(t):
    assert dataclasses.is_dataclass(t.payload)
    assert getattr(p, t.payload.__name__) is t.payload
    assert t.payload.__pydantic_config__["extra"] == "forbid"
    assert t.payload.__name__ in SAMPLE_PAYLOADS
    if t.effect is not None:
        effect = getattr(Case, t.effect)
        assert callable(effect)
        assert list(inspect.signature(effect).parameters) == ["self", "payload", "ctx"]
    for guard in t.guards:
        assert getattr(g, guard.__name__) is guard
        assert list(inspect.signature(guard).parameters) == ["case", "payload", "ctx"]


CAMEL_CASE = re.compile(r"^(?:[A-Z][a-z]+)+$")
IRREGULAR_PARTICIPLES = {"Sent", "Withdrawn"}
EVENTS = [
    pytest.param(
        name,
        id=name,
    )
    for t in TRANSITIONS
    for name in t.events
]


@pytest.mark.parametrize("name", EVENTS)
def test_events_are_past_tense_camel_case_names(name):
    assert CAMEL_CASE.match(name), name
    last_word = re.findall(r"[A-Z][a-z]+", name)[-1]
    assert last_word.endswith("ed") or last_word in IRREGULAR_PARTICIPLES, name
