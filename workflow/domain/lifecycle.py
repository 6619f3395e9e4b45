"""The lifecycle as data: one table of states and transitions drives everything else."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from functools import cached_property

from workflow.domain import guards as g
from workflow.domain import payloads as p
from workflow.domain.actors import Role
from workflow.domain.case import NEW

SAME = "="  # a reflexive transition: the case stays in the state it was in

ORIGIN, DESTINATION = "origin", "destination"


@dataclass(frozen=True, slots=True)
class Deadline:
    """Started on entering a state, cancelled on leaving it; fires ``fires`` when due."""

    name: str
    fires: str
    period: str  # name of the Programme setting added to the start (negative: before that date)
    counted_from: str | None = None  # a date field of the case; else the time the state is entered


@dataclass(frozen=True, slots=True)
class State:
    name: str
    phase: str
    final: bool = False
    deadlines: tuple[Deadline, ...] = ()
    # Ops call a case stuck when nothing happened to it for longer than this (final: never).
    stuck_after: timedelta | None = None


@dataclass(frozen=True, slots=True)
class Transition:
    trigger: str
    sources: tuple[str, ...]
    dest: str
    roles: frozenset[Role]
    events: tuple[str, ...]
    sides: tuple[str, ...] = (ORIGIN,)
    guards: tuple[g.Guard, ...] = ()
    payload: type = p.NoPayload
    effect: str | None = None  # name of the Case method that applies the payload
    needs: frozenset[str] = frozenset()  # parts of the case to load: members, plan
    restart_timers: bool = False  # a reflexive transition that re-arms its state's deadlines
    # Personal data is shared on a need-to-know basis (DOMAIN.md): the destination office sees a case
    # from the first point where it must act on it, never before. That point is the booking of travel:
    # its effects give the destination the pre-arrival notice and the airport-reception task, and from
    # then on the destination is notified of the case's moves (cancelled booking, departure) and fires
    # its own (arrival, handover). An inquiry, an application, a rejection or a withdrawal before any
    # booking concerns the origin office alone. A handover received from another deployment opens the
    # case there already shared. Once shared, a case stays shared: a booking cancelled and then
    # withdrawn was still prepared for by the destination, which keeps its record of it. A redirect
    # to another destination office unshares it: that office sees it from the handover sent to it.
    shares: bool = False  # the destination office sees the case from this transition on
    doc: str = ""

    def target(self, source: str) -> str:
        return source if self.dest == SAME else self.dest

    @property
    def guard_names(self) -> tuple[str, ...]:
        return tuple(guard.__name__ for guard in self.guards)


@dataclass(frozen=True)
class Lifecycle:
    version: str
    states: tuple[State, ...]
    transitions: tuple[Transition, ...]
    initial: str = NEW

    @cached_property
    def by_trigger(self) -> dict[str, Transition]:
        return {t.trigger: t for t in self.transitions}

    @cached_property
    def by_state(self) -> dict[str, State]:
        return {s.name: s for s in self.states}

    @cached_property
    def _allowed(self) -> dict[str, tuple[str, ...]]:
        names = [self.initial, *self.by_state]
        return {s: tuple(t.trigger for t in self.transitions if s in t.sources) for s in names}

    def allowed_triggers(self, state: str) -> tuple[str, ...]:
        return self._allowed.get(state, ())

    def edges(self) -> Iterable[tuple[str, Transition, str]]:
        for t in self.transitions:
            for source in t.sources:
                yield source, t, t.target(source)


def _t(
    trigger: str,
    sources: str | tuple[str, ...],
    dest: str,
    roles: Iterable[Role],
    events: str,
    **kw: object,
) -> Transition:
    sources = (sources,) if isinstance(sources, str) else sources
    return Transition(trigger, sources, dest, frozenset(roles), tuple(events.split()), **kw)  # type: ignore[arg-type]


CW, APPROVER, TRAVEL, FINANCE, SYSTEM = (
    Role.CASEWORKER,
    Role.APPROVER,
    Role.TRAVEL_OFFICER,
    Role.FINANCE_OFFICER,
    Role.SYSTEM,
)
BEFORE_DEPARTURE = (
    "inquiry",
    "application_submitted",
    "return_approved",
    "awaiting_travel_documents",
    "travel_documents_ready",
    "travel_booked",
    "no_show",
)
RETURN_GUARDS = (
    g.eligibility_recorded,
    g.consent_signed,
    g.not_eu_eea_citizen,
    g.no_expulsion_order,
    g.travel_document_present_or_requested,
    g.asylum_claim_settled,
)

STATES = (
    State("inquiry", "inquiry", stuck_after=timedelta(days=30)),
    State("application_submitted", "return approval", stuck_after=timedelta(days=14)),
    State("return_approved", "return approval", stuck_after=timedelta(days=14)),
    State("rejected", "return approval", final=True),
    State("awaiting_travel_documents", "travel", stuck_after=timedelta(days=45)),
    State("travel_documents_ready", "travel", stuck_after=timedelta(days=30)),
    State(
        "travel_booked",
        "travel",
        # Counted back from the booked departure; leaving the state (departed, no-show) cancels it.
        deadlines=(
            Deadline("departure_reminder", "remind_departure", "departure_reminder_offset", "departure_on"),
        ),
        stuck_after=timedelta(days=60),
    ),
    State("no_show", "travel", stuck_after=timedelta(days=14)),
    State("departed", "travel", stuck_after=timedelta(days=3)),
    State("arrived", "travel", stuck_after=timedelta(days=7)),
    State("withdrawn", "travel", final=True),
    State(
        "handover_pending",
        "handover",
        deadlines=(Deadline("handover_acknowledgement", "escalate_handover", "handover_ack_period"),),
        stuck_after=timedelta(days=7),
    ),
    State(
        "handed_over",
        "handover",
        # DOMAIN.md: three months counted from arrival, not from the handover.
        deadlines=(
            Deadline("returnee_contact", "escalate_missed_contact", "returnee_contact_period", "arrived_on"),
        ),
        stuck_after=timedelta(days=100),
    ),
    State("contact_overdue", "handover", stuck_after=timedelta(days=14)),
    State("lapsed", "handover", final=True),
    State(
        "reintegration_counselling",
        "reintegration",
        deadlines=(Deadline("plan_drafting", "escalate_plan_drafting", "plan_drafting_period"),),
        stuck_after=timedelta(days=35),
    ),
    State("plan_drafted", "reintegration", stuck_after=timedelta(days=14)),
    State("plan_submitted", "reintegration", stuck_after=timedelta(days=14)),
    State("plan_approved", "reintegration", stuck_after=timedelta(days=30)),
    State("disbursing", "reintegration", stuck_after=timedelta(days=60)),
    State(
        "monitoring",
        "monitoring",
        deadlines=(Deadline("monitoring_visit", "escalate_monitoring", "monitoring_interval"),),
        stuck_after=timedelta(days=120),
    ),
    State("closed", "monitoring", final=True),
)

TRANSITIONS = (
    _t(
        "register_inquiry",
        NEW,
        "inquiry",
        [CW],
        "InquiryRegistered",
        payload=p.RegisterInquiry,
        effect="register",
    ),
    _t(
        "record_eligibility",
        ("inquiry", "application_submitted"),
        SAME,
        [CW],
        "EligibilityRecorded",
        payload=p.RecordEligibility,
        effect="record_eligibility",
    ),
    _t(
        "submit_application",
        "inquiry",
        "application_submitted",
        [CW],
        "ApplicationSubmitted",
        guards=(g.eligibility_recorded, g.consent_signed),
    ),
    _t(
        "approve_return",
        "application_submitted",
        "return_approved",
        [APPROVER],
        "ReturnApproved",
        guards=RETURN_GUARDS,
    ),
    _t("reject_return", "application_submitted", "rejected", [APPROVER], "ReturnRejected", payload=p.Reason),
    _t(
        "request_travel_documents",
        "return_approved",
        "awaiting_travel_documents",
        [TRAVEL],
        "TravelDocumentsRequested",
    ),
    _t(
        "record_travel_documents",
        ("return_approved", "awaiting_travel_documents"),
        "travel_documents_ready",
        [TRAVEL],
        "TravelDocumentsObtained",
        payload=p.RecordTravelDocuments,
        effect="record_travel_documents",
    ),
    _t(
        "book_travel",
        "travel_documents_ready",
        "travel_booked",
        [TRAVEL],
        "TravelBooked",
        payload=p.BookTravel,
        effect="book_travel",
        shares=True,
    ),
    _t(
        "cancel_booking",
        "travel_booked",
        "travel_documents_ready",
        [TRAVEL],
        "BookingCancelled",
        payload=p.Reason,
    ),
    _t("record_no_show", "travel_booked", "no_show", [TRAVEL], "NoShowRecorded", payload=p.Reason),
    _t(
        "rebook_travel",
        "no_show",
        "travel_booked",
        [TRAVEL],
        "TravelRebooked",
        payload=p.BookTravel,
        effect="book_travel",
        shares=True,
    ),
    _t(
        "remind_departure",
        "travel_booked",
        SAME,
        [SYSTEM],
        "DepartureReminderIssued",
        guards=(g.departure_ahead,),
    ),
    _t("confirm_departure", "travel_booked", "departed", [TRAVEL], "DepartureConfirmed"),
    _t("withdraw", BEFORE_DEPARTURE, "withdrawn", [CW], "CaseWithdrawn", payload=p.Reason),
    _t(
        "confirm_arrival",
        "departed",
        "arrived",
        [TRAVEL, CW],
        "ArrivalConfirmed",
        sides=(ORIGIN, DESTINATION),
        payload=p.ConfirmArrival,
        effect="confirm_arrival",
        guards=(g.arrival_after_departure,),
    ),
    # Shares: a case redirected to another destination office is unshared (the new office has had
    # nothing to act on yet); the package it is sent is its first need to know.
    _t("send_handover", "arrived", "handover_pending", [CW], "HandoverSent", shares=True),
    _t(
        "redirect_handover",
        "arrived",
        SAME,
        [CW],
        "HandoverRedirected",
        payload=p.RedirectHandover,
        effect="redirect_handover",
        guards=(g.another_destination,),
        doc="Another destination office for a case not yet handed over (the first refused it, or "
        "the family settles elsewhere): the next send_handover goes there.",
    ),
    _t(
        "close_without_handover",
        ("departed", "arrived", "handover_pending"),
        "closed",
        [APPROVER],
        "CaseClosed",
        payload=p.Reason,
        effect="close_without_handover",
        doc="The family travelled but no destination office takes the case over (refused, no "
        "office covers where they settled, contact lost on the way): closed with its reason.",
    ),
    _t(
        "receive_handover",
        NEW,
        "handover_pending",
        [SYSTEM],
        "HandoverReceived",
        payload=p.ReceiveHandover,
        effect="receive_handover",
        shares=True,
        doc="Opens, in the destination's deployment, a case another deployment handed over "
        "(same case id); fired by the origin office's automation when its signed package arrives.",
    ),
    _t(
        "receive_handover_again",
        "arrived",
        "handover_pending",
        [SYSTEM],
        "HandoverReceived",
        payload=p.ReceiveHandover,
        effect="receive_handover_again",
        doc="The origin sends again a handover the destination refused: the destination's copy "
        "(left in arrived by the refusal) is pending again, its journey as the new package has it.",
    ),
    _t("escalate_handover", "handover_pending", SAME, [SYSTEM], "HandoverEscalated", restart_timers=True),
    _t(
        "accept_handover",
        "handover_pending",
        "handed_over",
        [CW, APPROVER, SYSTEM],
        "HandoverAccepted",
        sides=(DESTINATION,),
        effect="accept_handover",
    ),
    _t(
        "refuse_handover",
        "handover_pending",
        "arrived",
        [CW, APPROVER, SYSTEM],
        "HandoverRefused",
        sides=(DESTINATION,),
        payload=p.Reason,
    ),
    _t("escalate_missed_contact", "handed_over", "contact_overdue", [SYSTEM], "ReturneeContactEscalated"),
    _t(
        "record_returnee_contact",
        ("handed_over", "contact_overdue"),
        "reintegration_counselling",
        [CW],
        "ReturneeContacted",
        sides=(DESTINATION,),
        effect="record_returnee_contact",
    ),
    _t(
        "lapse",
        # The family stopped engaging: before the grants are paid out, the case may lapse.
        ("contact_overdue", "reintegration_counselling", "plan_drafted", "plan_submitted", "plan_approved"),
        "lapsed",
        [APPROVER],
        "CaseLapsed",
        sides=(DESTINATION,),
        payload=p.Reason,
    ),
    _t(
        "escalate_plan_drafting",
        "reintegration_counselling",
        SAME,
        [SYSTEM],
        "PlanDraftingEscalated",
        restart_timers=True,
    ),
    _t(
        "draft_plan",
        ("reintegration_counselling", "plan_drafted"),
        "plan_drafted",
        [CW],
        "PlanDrafted",
        sides=(DESTINATION,),
        payload=p.DraftPlan,
        effect="draft_plan",
        needs=frozenset({"members"}),
        guards=(g.plan_lines_name_household_members,),
    ),
    _t(
        "submit_plan",
        "plan_drafted",
        "plan_submitted",
        [CW],
        "PlanSubmitted",
        sides=(DESTINATION,),
        needs=frozenset({"plan"}),
        guards=(g.has_plan,),
    ),
    _t(
        "approve_plan",
        "plan_submitted",
        "plan_approved",
        [APPROVER],
        "PlanApproved",
        needs=frozenset({"plan"}),
        guards=(g.has_plan,),
        effect="approve_plan",
    ),
    _t("return_plan", "plan_submitted", "plan_drafted", [APPROVER], "PlanReturned", payload=p.Reason),
    _t(
        "request_disbursement",
        ("plan_approved", "disbursing"),
        SAME,
        [CW, FINANCE],
        "DisbursementRequested",
        sides=(DESTINATION,),
        payload=p.RequestDisbursement,
        effect="request_disbursement",
        needs=frozenset({"plan"}),
        guards=(g.plan_approved, g.cash_allowed, g.within_budget_line),
        doc="A tranche to a supplier; no money moves until another finance officer approves it.",
    ),
    _t(
        "approve_disbursement",
        # The first approved tranche starts the disbursing state: in it, money has moved.
        ("plan_approved", "disbursing"),
        "disbursing",
        [FINANCE],
        "GrantDisbursed",
        sides=(DESTINATION,),
        payload=p.ApproveDisbursement,
        effect="approve_disbursement",
        needs=frozenset({"plan"}),
        guards=(
            g.plan_approved,
            g.disbursement_requested,
            g.four_eyes,
            g.cash_allowed,
            g.within_budget_line,
        ),
        doc="Commits the money (four eyes: not the requester, not the plan's approver).",
    ),
    _t(
        "reject_disbursement",
        ("plan_approved", "disbursing"),
        SAME,
        [FINANCE],
        "DisbursementRejected",
        sides=(DESTINATION,),
        payload=p.RejectDisbursement,
        effect="reject_disbursement",
        needs=frozenset({"plan"}),
        guards=(g.plan_approved, g.disbursement_requested),
    ),
    _t(
        "record_receipt",
        "disbursing",
        SAME,
        [FINANCE, CW],
        "ReceiptRecorded",
        sides=(DESTINATION,),
        payload=p.RecordReceipt,
        effect="record_receipt",
        needs=frozenset({"plan"}),
        guards=(g.plan_approved, g.disbursement_approved),
    ),
    _t(
        "record_contribution",
        ("plan_approved", "disbursing", "monitoring"),
        SAME,
        [CW, FINANCE],
        "ContributionRecorded",
        sides=(DESTINATION,),
        payload=p.RecordContribution,
        effect="record_contribution",
    ),
    _t(
        "complete_disbursement",
        "disbursing",
        "monitoring",
        [FINANCE, CW],
        "DisbursementCompleted",
        sides=(DESTINATION,),
        needs=frozenset({"plan"}),
        guards=(g.has_disbursement, g.no_request_awaiting_approval, g.every_receipt_recorded),
    ),
    _t(
        "record_monitoring_visit",
        "monitoring",
        SAME,
        [CW],
        "MonitoringVisitRecorded",
        sides=(DESTINATION,),
        payload=p.RecordMonitoringVisit,
        effect="record_monitoring_visit",
        restart_timers=True,
    ),
    _t("escalate_monitoring", "monitoring", SAME, [SYSTEM], "MonitoringVisitEscalated", restart_timers=True),
    _t(
        "close",
        "monitoring",
        "closed",
        [APPROVER],
        "CaseClosed",
        sides=(DESTINATION,),
        payload=p.Close,
        effect="close",
        guards=(g.has_monitoring_visit_unless_contact_lost,),
    ),
)

LIFECYCLE = Lifecycle(version="2026.1", states=STATES, transitions=TRANSITIONS)
LIFECYCLES: dict[str, Lifecycle] = {LIFECYCLE.version: LIFECYCLE}
