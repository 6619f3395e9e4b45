"""What workers do for each event: one row per effect, the other half of the lifecycle table."""

from __future__ import annotations

from dataclasses import dataclass

from workflow.domain.lifecycle import DESTINATION, ORIGIN
from workflow.domain.tasks import CANCELLED, DONE

NOTIFY_FAMILY, NOTIFY_OFFICE, CREATE_TASK, DELIVER_HANDOVER, DELIVER_ACK, CLOSE_TASKS, COMPLETE_TASKS = (
    "notify_family",
    "notify_office",
    "create_task",
    "deliver_handover",
    "deliver_ack",  # the destination's decision, back to an origin office in another deployment
    "close_tasks",  # the side office's open tasks of a kind, made by earlier events: cancelled
    "complete_tasks",  # the same, done: the event is the work they asked for (a visit recorded)
)
SETTLING = {CLOSE_TASKS: CANCELLED, COMPLETE_TASKS: DONE}  # the status each leaves the tasks in


@dataclass(frozen=True, slots=True)
class Effect:
    kind: str
    subject: str  # the template or task kind
    side: str = ORIGIN  # the office that receives it (staff notices and tasks)
    due_in_days: int | None = None
    # A task that replaces the open ones of its kind the case's earlier events made: they are done
    # (the next monitoring visit asked for once the last one was recorded). In the same statement
    # as the new task: no job of its own.
    replaces: bool = False

    @property
    def name(self) -> str:
        """Unique per event: the key of the job (and of the send's idempotency key)."""
        return f"{self.kind}:{self.subject}:{self.side}"


def family(template: str) -> Effect:
    return Effect(NOTIFY_FAMILY, template)


def office(template: str, side: str) -> Effect:
    return Effect(NOTIFY_OFFICE, template, side)


def task(kind: str, side: str, due_in_days: int | None = None, replaces: bool = False) -> Effect:
    return Effect(CREATE_TASK, kind, side, due_in_days, replaces)


def close(kind: str, side: str) -> Effect:
    return Effect(CLOSE_TASKS, kind, side)


def fulfil(kind: str, side: str) -> Effect:
    return Effect(COMPLETE_TASKS, kind, side)


# The journey is off (a cancelled booking, a no-show, a withdrawal): its preparations are too.
_JOURNEY_OFF = (close("pre_arrival_notice", ORIGIN), close("airport_reception", DESTINATION))


_TRAVEL_BOOKED = (
    family("travel_booked"),
    task("pre_arrival_notice", ORIGIN, 3),
    office("pre_arrival_notice", DESTINATION),
    task("airport_reception", DESTINATION),
)

_HANDOVER_DECISION = Effect(DELIVER_ACK, "handover_decision", ORIGIN)

# Every kind of task the table opens, with its office's side (tests/unit/test_effect_runner.py
# holds this to the table). A case that ends cancels whatever of them is still open.
OPENED_TASKS = (
    ("request_travel_documents", ORIGIN),
    ("pre_arrival_notice", ORIGIN),
    ("airport_reception", DESTINATION),
    ("reintegration_counselling", DESTINATION),
    ("monitoring_visit", DESTINATION),
)
_CASE_OVER = tuple(close(kind, side) for kind, side in OPENED_TASKS)

EFFECTS: dict[str, tuple[Effect, ...]] = {
    "InquiryRegistered": (family("inquiry_registered"),),
    "ApplicationSubmitted": (office("application_submitted", ORIGIN),),
    "ReturnApproved": (family("return_approved"), task("request_travel_documents", ORIGIN, 7)),
    "ReturnRejected": (family("return_rejected"),),
    "TravelBooked": _TRAVEL_BOOKED,
    "TravelRebooked": _TRAVEL_BOOKED,
    "DepartureReminderIssued": (family("departure_reminder"),),
    "BookingCancelled": (office("booking_cancelled", DESTINATION), *_JOURNEY_OFF),
    "NoShowRecorded": (office("no_show", ORIGIN), office("reception_off", DESTINATION), *_JOURNEY_OFF),
    "DepartureConfirmed": (office("departure_confirmed", DESTINATION),),
    "TravelDocumentsObtained": (fulfil("request_travel_documents", ORIGIN),),
    "ArrivalConfirmed": (
        family("arrival_welcome"),
        office("arrival_confirmed", ORIGIN),
        fulfil("airport_reception", DESTINATION),
    ),
    # The destination hears of a withdrawal only of a case shared with it (a booking it prepared
    # a reception for): the workers drop a destination notice of a case it never saw.
    "CaseWithdrawn": (
        office("case_withdrawn", ORIGIN),
        office("case_withdrawn", DESTINATION),
        close("request_travel_documents", ORIGIN),
        *_JOURNEY_OFF,
    ),
    "HandoverSent": (Effect(DELIVER_HANDOVER, "handover_package", DESTINATION),),
    "HandoverReceived": (office("handover_received", DESTINATION),),
    "HandoverEscalated": (office("handover_escalated", ORIGIN), office("handover_escalated", DESTINATION)),
    "HandoverAccepted": (
        family("handover_accepted"),
        office("handover_accepted", ORIGIN),
        task("reintegration_counselling", DESTINATION, 30),
        _HANDOVER_DECISION,
    ),
    "HandoverRefused": (office("handover_refused", ORIGIN), _HANDOVER_DECISION),
    "ReturneeContactEscalated": (
        office("returnee_contact_overdue", DESTINATION),
        office("returnee_contact_overdue", ORIGIN),
    ),
    "PlanDraftingEscalated": (office("plan_drafting_overdue", DESTINATION),),
    "PlanSubmitted": (office("plan_submitted", ORIGIN), fulfil("reintegration_counselling", DESTINATION)),
    "PlanApproved": (family("plan_approved"), office("plan_approved", DESTINATION)),
    "PlanReturned": (office("plan_returned", DESTINATION),),
    "GrantDisbursed": (family("grant_disbursed"),),
    "DisbursementCompleted": (task("monitoring_visit", DESTINATION, 90),),
    # The visit done is the one the last visit (or the last tranche) asked for; the next is due.
    "MonitoringVisitRecorded": (task("monitoring_visit", DESTINATION, 90, replaces=True),),
    "MonitoringVisitEscalated": (
        family("monitoring_visit_due"),
        office("monitoring_visit_overdue", DESTINATION),
    ),
    "CaseLapsed": (office("case_lapsed", ORIGIN), *_CASE_OVER),
    "CaseClosed": (family("case_closed"), office("case_closed", ORIGIN), *_CASE_OVER),
}


# Events whose decision goes to the origin's deployment (DELIVER_ACK), which fires the same event
# on its copy of the case: with two deployments each such event happens in both.
MIRRORED = frozenset(name for name, effects in EFFECTS.items() if any(e.kind == DELIVER_ACK for e in effects))
# Events that open tasks and do nothing else (monitoring visits): fired after the handover by the
# destination's staff, in the deployment that serves the destination office, so their tasks are
# made where they are fired without asking where the office is served (tests/unit/test_effect_runner.py).
TASKS_ONLY = frozenset(
    name
    for name, effects in EFFECTS.items()
    if any(e.kind == CREATE_TASK for e in effects)
    and all(e.kind in (CREATE_TASK, *SETTLING) for e in effects)
)


def effects_of(event_type: str) -> tuple[Effect, ...]:
    return EFFECTS.get(event_type, ())


def effect_named(event_type: str, name: str) -> Effect | None:
    return next((e for e in effects_of(event_type) if e.name == name), None)


# Every kind of task the workers open (the API's task filter lists them).
TASK_KINDS = tuple(
    sorted({e.subject for effects in EFFECTS.values() for e in effects if e.kind == CREATE_TASK})
)


# The events that settle a side's tasks of a kind, by the status they leave them in (cancelled: a
# journey called off, a case closed; done: the work done, or a task that replaces them): a task
# an earlier event asks for is made already settled once one of these came after it, however
# late its job runs.
def _settled_by() -> dict[tuple[str, str], dict[str, tuple[str, ...]]]:
    found: dict[tuple[str, str], dict[str, tuple[str, ...]]] = {}
    for name, effects in EFFECTS.items():
        for effect in effects:
            status = DONE if effect.kind == CREATE_TASK and effect.replaces else SETTLING.get(effect.kind)
            if status is not None:
                by_status = found.setdefault((effect.subject, effect.side), {})
                by_status[status] = (*by_status.get(status, ()), name)
    return found


SETTLED_BY = _settled_by()
