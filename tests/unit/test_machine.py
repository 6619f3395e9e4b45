"""The shared machine: attaches nothing to cases, stays flat in memory, arms and cancels timers."""

from __future__ import annotations

import gc
import sys
import tracemalloc
from datetime import UTC, datetime, time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.builders import (
    APPROVED_ID,
    NOW,
    OFFICE_ON,
    PROGRAMME,
    REQUESTED_ID,
    STRANGER_OFFICE,
    actor_for,
    case_for,
    case_in,
    ctx,
    first_role,
    machine,
    payload_for,
    raw_payload,
    snapshot,
)
from workflow.demo import HOUSEHOLD, STEPS, TLL_CASEWORKER
from workflow.domain import payloads as p
from workflow.domain.actors import SYSTEM_ACTOR, Actor, Role
from workflow.domain.case import Case
from workflow.domain.changes import TimersCancelled, TimerStarted
from workflow.domain.errors import DomainError
from workflow.domain.lifecycle import DESTINATION, LIFECYCLE, ORIGIN
from workflow.domain.machine import machine_for
from workflow.domain.programme import Programme
from workflow.service_layer.payloads import parse_payload

EDGES = [pytest.param(s, t, d, id=f"{s}-{t.trigger}->{d}") for s, t, d in LIFECYCLE.edges()]
TRIGGERS = sorted(LIFECYCLE.by_trigger)


def fire_first_role(case: Case, t: Any, programme: Programme = PROGRAMME) -> Any:
    return machine().fire(case, t.trigger, payload_for(t), ctx(actor_for(t, first_role(t)), programme))


def test_machine_for_returns_one_shared_machine_per_version():
    assert machine_for(LIFECYCLE.version) is machine_for(LIFECYCLE.version)
    assert machine_for(LIFECYCLE.version).lifecycle is LIFECYCLE


@pytest.mark.parametrize(("source", "t", "target"), EDGES)
def test_firing_attaches_nothing_to_the_case_or_the_machine(source, t, target):
    case = case_for(t, source)
    names_before, class_before = dir(case), dict(vars(Case))

    fire_first_role(case, t)

    assert not hasattr(case, "__dict__")
    assert dir(case) == names_before
    assert dict(vars(Case)) == class_before
    assert dir(case) == dir(Case.new(LIFECYCLE.version))
    assert machine()._machine.models == []


def test_the_state_of_a_case_cannot_be_assigned():
    case = case_in("inquiry")
    with pytest.raises(AttributeError):
        case.state = "closed"  # type: ignore[misc]
    assert case.state == "inquiry"


def _fire_reflexively(case: Case, times: int) -> None:
    m, context, nothing = machine(), ctx(SYSTEM_ACTOR), p.NoPayload()
    for _ in range(times):
        m.fire(case, "escalate_monitoring", nothing, context)
        case.changes.clear()


@pytest.mark.slow
def test_memory_stays_flat_over_two_hundred_thousand_fires():
    case = case_in("monitoring", version=0)

    # Untraced: any object left behind per fire would add ~180k allocated blocks.
    _fire_reflexively(case, 20_000)
    gc.collect()
    blocks_at_20k = sys.getallocatedblocks()
    _fire_reflexively(case, 180_000)
    gc.collect()
    assert sys.getallocatedblocks() - blocks_at_20k < 1_000
    assert case.version == 200_000

    # Traced (7x slower, so a shorter run): bytes, down to one 8-byte pointer kept per fire.
    tracemalloc.start()
    try:
        _fire_reflexively(case, 5_000)
        gc.collect()
        early = tracemalloc.get_traced_memory()[0]
        _fire_reflexively(case, 25_000)
        gc.collect()
        growth = tracemalloc.get_traced_memory()[0] - early
    finally:
        tracemalloc.stop()
    assert growth < 64 * 1024  # 25k fires leaking one pointer each would add ~200 KiB


# Timers: derived from the deadlines of the table, with programme periods that differ.


def _moves(source: str, t: Any, target: str) -> bool:
    return source != target or t.restart_timers


@pytest.mark.parametrize(("source", "t", "target"), EDGES)
def test_timers_are_cancelled_on_leaving_and_armed_on_entering_a_state_with_deadlines(source, t, target):
    case = case_for(t, source)
    case.changes.clear()

    fire_first_role(case, t)

    timers = [c for c in case.changes if isinstance(c, TimersCancelled | TimerStarted)]
    source_state = LIFECYCLE.by_state.get(source)
    cancelled = (
        [TimersCancelled(source)]
        if _moves(source, t, target) and source_state and source_state.deadlines
        else []
    )
    deadlines = LIFECYCLE.by_state[target].deadlines if _moves(source, t, target) else ()
    assert timers[: len(cancelled)] == cancelled
    started = [c.timer for c in timers[len(cancelled) :]]
    assert [(s.name, s.state, s.fires_trigger, s.due_at, s.created_at) for s in started] == [
        (d.name, target, d.fires, _start(case, d.counted_from) + getattr(PROGRAMME, d.period), NOW)
        for d in deadlines
    ]


def _start(case: Case, counted_from: str | None) -> datetime:
    """A deadline counts from a date of the case at midnight UTC, or else from the fire."""
    day = getattr(case, counted_from) if counted_from else None
    return datetime.combine(day, time(), UTC) if day else NOW


def test_booking_travel_arms_the_reminder_its_lead_before_the_departure_day():
    case = case_in("travel_documents_ready", departure_on=None)
    fire_first_role(case, LIFECYCLE.by_trigger["book_travel"])
    (started,) = [c for c in case.changes if isinstance(c, TimerStarted)]
    assert started.timer.fires_trigger == "remind_departure"
    assert started.timer.due_at == datetime(2026, 12, 1, tzinfo=UTC) - PROGRAMME.departure_reminder_lead
    assert started.timer.due_at == datetime(2026, 11, 27, tzinfo=UTC)  # PROGRAMME's lead: 4 days


@pytest.mark.parametrize("trigger", ["confirm_departure", "record_no_show", "cancel_booking", "withdraw"])
def test_leaving_travel_booked_cancels_the_departure_reminder(trigger):
    case = case_in("travel_booked")
    fire_first_role(case, LIFECYCLE.by_trigger[trigger])
    assert case.changes == [TimersCancelled("travel_booked")]


def test_entering_monitoring_arms_the_visit_timer_for_the_programme_interval():
    complete = LIFECYCLE.by_trigger["complete_disbursement"]
    case = case_for(complete, "disbursing")
    fire_first_role(case, complete)
    (started,) = case.changes
    assert isinstance(started, TimerStarted)
    assert started.timer.due_at == NOW + PROGRAMME.monitoring_interval
    assert started.timer.fires_trigger == "escalate_monitoring"


def test_closing_a_case_cancels_its_monitoring_timers():
    case = case_in("monitoring")
    fire_first_role(case, LIFECYCLE.by_trigger["close"])
    assert case.changes == [TimersCancelled("monitoring")]


@pytest.mark.parametrize("trigger", ["record_monitoring_visit", "escalate_monitoring"])
def test_a_reflexive_transition_that_restarts_timers_re_arms_them(trigger):
    case = case_in("monitoring")
    fire_first_role(case, LIFECYCLE.by_trigger[trigger])
    timers = [c for c in case.changes if isinstance(c, TimersCancelled | TimerStarted)]
    assert timers[0] == TimersCancelled("monitoring")
    assert [type(c) for c in timers] == [TimersCancelled, TimerStarted]
    assert case.state == "monitoring"


def test_recording_a_contribution_does_not_touch_the_monitoring_timer():
    case = case_in("monitoring")
    entered_at = case.state_entered_at
    fire_first_role(case, LIFECYCLE.by_trigger["record_contribution"])
    assert not [c for c in case.changes if isinstance(c, TimersCancelled | TimerStarted)]
    assert case.state_entered_at == entered_at


# Random sequences of triggers, actors and payloads on one in-memory case.

ACTORS = [
    SYSTEM_ACTOR,
    Actor.of("pat", "tallinn", Role.APPROVER),
    Actor.of("pat", "kyiv", Role.FINANCE_OFFICER),
] + [
    Actor.of(f"{role.value}@{office}", office, role)
    for role in Role
    if role is not Role.SYSTEM
    for office in (OFFICE_ON[ORIGIN], OFFICE_ON[DESTINATION], STRANGER_OFFICE)
]
START_STATES = [LIFECYCLE.initial, *(s.name for s in LIFECYCLE.states)]
# Payloads that a guard refuses, beside the valid samples.
BROKEN_PAYLOADS = {
    "RequestDisbursement": [{"kind": "cash"}, {"amount": "5000.00"}, {"budget_line_id": "line-elsewhere"}],
    "ApproveDisbursement": [{"disbursement_id": APPROVED_ID}, {"disbursement_id": "no-such-tranche"}],
    "RecordReceipt": [{"disbursement_id": REQUESTED_ID}],
    "ConfirmArrival": [{"arrived_on": "2026-11-01"}],
}


@st.composite
def moves(draw: Any, case: Case) -> tuple[str, Actor, Any]:
    """Mostly a trigger some actor may fire now, sometimes anything at all."""
    permitted = [(trigger, a) for a in ACTORS for trigger in machine().triggers_for(case, a)]
    if permitted and draw(st.integers(0, 3)):
        trigger, actor = draw(st.sampled_from(permitted))
    else:
        trigger, actor = draw(st.sampled_from(TRIGGERS)), draw(st.sampled_from(ACTORS))
    t = LIFECYCLE.by_trigger[trigger]
    broken = draw(st.sampled_from([{}, *BROKEN_PAYLOADS.get(t.payload.__name__, [])]))
    return trigger, actor, parse_payload(t.payload, {**raw_payload(t), **broken})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_trigger_sequences_move_only_on_success_and_count_each_success(data):
    case = case_in(data.draw(st.sampled_from(START_STATES), label="start"), version=0)
    successes, last_target = 0, case.state

    for _ in range(data.draw(st.integers(1, 40), label="steps")):
        trigger, actor, payload = data.draw(moves(case), label="move")
        before = snapshot(case)
        try:
            fired = machine().fire(case, trigger, payload, ctx(actor))
        except DomainError:
            assert snapshot(case) == before
        else:
            successes += 1
            last_target = LIFECYCLE.by_trigger[trigger].target(before["_state"])
            assert fired.to_state == last_target
        assert case.state == last_target
        assert case.version == successes


def test_the_seed_familys_story_runs_in_memory_from_registration_to_closure():
    case = Case.new(LIFECYCLE.version)
    register = LIFECYCLE.by_trigger["register_inquiry"]
    registration = {"origin_office": "tallinn", "destination_office": "kyiv", "members": HOUSEHOLD}
    machine().fire(case, register.trigger, parse_payload(register.payload, registration), ctx(TLL_CASEWORKER))

    for step in STEPS:
        view = {
            "members": [{"id": m.id} for m in case.members or ()],
            "plan": {
                "lines": [{"id": line.id} for line in case.plan.lines],
                "disbursements": [{"id": d.id, "status": d.status} for d in case.plan.disbursements],
            }
            if case.plan
            else None,
        }
        raw = step.payload(view) if callable(step.payload) else step.payload
        t = LIFECYCLE.by_trigger[step.trigger]
        machine().fire(case, step.trigger, parse_payload(t.payload, raw), ctx(step.actor, Programme()))

    assert case.state == "closed"
    assert case.version == len(STEPS) + 1
    assert case.owner_office == "kyiv"
    assert case.outcome == "reintegrated"


def test_the_returnee_contact_deadline_counts_from_arrival_not_from_the_handover():
    from datetime import date

    from workflow.domain.changes import TimerStarted

    case = case_in("handover_pending", arrived_on=date(2026, 11, 1))
    machine().fire(
        case,
        "accept_handover",
        payload_for(LIFECYCLE.by_trigger["accept_handover"]),
        ctx(actor_for(LIFECYCLE.by_trigger["accept_handover"], Role.CASEWORKER)),
    )
    (started,) = [c.timer for c in case.changes if isinstance(c, TimerStarted)]
    assert started.name == "returnee_contact"
    assert started.due_at.date() == date(2026, 11, 1) + PROGRAMME.returnee_contact_period
