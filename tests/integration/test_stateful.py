"""A hypothesis state machine firing random triggers at the engine, on SQLite and PostgreSQL.

Random triggers (mostly ones allowed from the case's state, some not, one unknown), random
actors (the demo's staff, the timer system, an officer of a third office, a person with no
roles), valid or junk payloads, right or wrong expected versions, and idempotency keys that
are sometimes reused. After every call:

* the case's state is the last history row's ``to_state``; history versions run 1..version
  without gaps; each row starts where the previous one ended and follows a lifecycle edge;
* every committed transition has exactly its lifecycle events in the outbox, at its version;
* history holds exactly the fires that committed (a model of each case is kept alongside);
* pending timers are exactly the deadlines of the current state;
* a refused call, and a replayed one, change no row; a committed fire touches only its case;
* a fire commits only if its trigger is allowed from the state, its expected version is
  current, its actor holds a role of the transition on the right side, and its payload is
  not one the engine must refuse (unknown keys, not an object).
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections import Counter
from collections.abc import Iterable
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import Connection, func, select

from tests.conftest import make_app
from tests.support import REGISTRATION, FixedClock
from workflow.adapters import tables as tb
from workflow.bootstrap import App
from workflow.demo import (
    HOUSEHOLD,
    KBP_APPROVER,
    KBP_CASEWORKER,
    KBP_FINANCE,
    KBP_FINANCE_LEAD,
    STEPS,
    TLL_APPROVER,
    TLL_CASEWORKER,
    TLL_TRAVEL,
    TODAY,
)
from workflow.domain import payloads as p
from workflow.domain.actors import SYSTEM_ACTOR, Actor, Role
from workflow.domain.errors import (
    BudgetExceeded,
    DomainError,
    GuardFailed,
    IdempotencyKeyReused,
    InvalidPayload,
    PermissionDenied,
    TransitionNotAllowed,
    UnknownCase,
    UnknownTrigger,
    VersionConflict,
)
from workflow.domain.lifecycle import DESTINATION, LIFECYCLE, Transition
from workflow.service_layer.transitions import FireResult

pytestmark = pytest.mark.slow

REGISTER = "register_inquiry"
UNKNOWN_TRIGGER = "teleport_to_closed"
TRIGGERS = (*LIFECYCLE.by_trigger, UNKNOWN_TRIGGER)

RIGA_OFFICER = Actor.of(
    "riga-officer", "riga", Role.CASEWORKER, Role.APPROVER, Role.TRAVEL_OFFICER, Role.FINANCE_OFFICER
)
NO_ROLES = Actor.of("tll-visitor", "tallinn")
ACTORS = (
    TLL_CASEWORKER,
    TLL_APPROVER,
    TLL_TRAVEL,
    KBP_CASEWORKER,
    KBP_FINANCE,
    KBP_FINANCE_LEAD,
    KBP_APPROVER,
    SYSTEM_ACTOR,
    RIGA_OFFICER,
    NO_ROLES,
)
CASEWORKER_OF = {"tallinn": TLL_CASEWORKER, "kyiv": KBP_CASEWORKER, "riga": RIGA_OFFICER}
ROUTES = (("tallinn", "kyiv"), ("kyiv", "tallinn"), ("riga", "kyiv"))

# The first payload the seed story gives each trigger (a dict, or a builder taking the case view).
STORY_PAYLOADS: dict[str, Any] = {}
for _step in STEPS:
    STORY_PAYLOADS.setdefault(_step.trigger, _step.payload)

# Tables with rows that belong to one case, and the column naming it.
CASE_TABLES = tuple(
    (table, table.c.id if table.name == "cases" else table.c.case_id)
    for table in tb.metadata.sorted_tables
    if table.name == "cases" or "case_id" in table.c
)
OTHER_TABLES = tuple(table for table in tb.metadata.sorted_tables if table not in {t for t, _ in CASE_TABLES})

Snapshot = tuple[tuple[int, ...], dict[tuple[str, str], list[tuple[Any, ...]]]]


def _day(offset: int) -> str:
    return str(TODAY + timedelta(days=offset))


# -- the model ----------------------------------------------------------------------------------


@dataclasses.dataclass
class CaseModel:
    origin: str
    destination: str
    state: str = LIFECYCLE.initial
    version: int = 0
    fired: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (trigger, actor id)
    # With the destination office: from the booking or a received handover; a redirect unshares
    # it until the next send_handover.
    shared: bool = False


@dataclasses.dataclass(frozen=True)
class Call:
    """One request to the service; ``case_id`` None is a registration (``create_case``)."""

    case_id: str | None
    trigger: str
    actor: Actor
    payload: Any
    expected_version: int | None = None
    must_fail: bool = False  # a payload the engine has to refuse whatever else holds

    def signature(self) -> str:
        """What makes two requests "the same" for an idempotency key."""
        body = {
            "case_id": self.case_id,
            "trigger": self.trigger,
            "actor": self.actor.id,
            "payload": self.payload,
            "expected_version": self.expected_version,
        }
        return json.dumps(body, sort_keys=True, default=str)


# The transitions from which the destination office sees a case (DOMAIN.md: minimum needed).
SHARING = {"book_travel", "rebook_travel", "receive_handover", "send_handover"}


def visible(actor: Actor, model: CaseModel) -> bool:
    """Staff see their office's cases, and the destination a case shared with it; the
    office-less timers see every case."""
    if actor.office is None:
        return Role.SYSTEM in actor.roles
    return actor.office == model.origin or (actor.office == model.destination and model.shared)


def may_fire(t: Transition, actor: Actor, origin: str, destination: str) -> bool:
    """The permission rule, written out independently of the engine's."""
    if not actor.roles & t.roles:
        return False
    if actor.office is None:  # the timers fire only what is the system's alone
        return Role.SYSTEM in actor.roles and t.roles == {Role.SYSTEM}
    if t.trigger == REGISTER:
        return actor.office == origin
    return actor.office in {destination if side == DESTINATION else origin for side in t.sides}


# -- payload strategies -------------------------------------------------------------------------

REASONS = st.sampled_from(["the family changed its plans", "  documents expired  ", "r"])


def _eligibility() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "nationality": st.sampled_from(["UA", "ge", "EE"]),
            "expulsion_order": st.booleans(),
            "consent_signed_on": st.sampled_from([_day(-3), None]),
            "travel_document": st.sampled_from(["present", "requested", "missing"]),
            "asylum_status": st.sampled_from(["none", "pending", "withdrawn", "closed"]),
            "return_chosen_while_pending": st.booleans(),
        }
    )


def _book_travel() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "departure_on": st.integers(1, 30).map(_day),
            "route": st.sampled_from(["TLL-WAW, rail to Kyiv", "TLL-RIX-KBP"]),
            "carrier": st.sampled_from(["LOT", "airBaltic"]),
        }
    )


FIXED_SHAPES: dict[type, st.SearchStrategy[Any]] = {
    p.NoPayload: st.sampled_from([None, {}]),
    p.Reason: st.fixed_dictionaries({"reason": REASONS}),
    p.RecordEligibility: _eligibility(),
    p.RecordTravelDocuments: st.fixed_dictionaries(
        {"document_kind": st.sampled_from(["passport", "travel_certificate", "laissez_passer"])}
    ),
    p.BookTravel: _book_travel(),
    p.ConfirmArrival: st.fixed_dictionaries({"arrived_on": st.integers(-3, 40).map(_day)}),
    p.RecordContribution: st.fixed_dictionaries(
        {
            "amount": st.sampled_from(["900.00", "12.50", "1"]),
            "currency": st.sampled_from(["EUR", "UAH"]),
            "purpose": st.sampled_from(["rent of the premises", "tools"]),
        }
    ),
    p.RecordMonitoringVisit: st.fixed_dictionaries(
        {
            "visited_on": st.integers(30, 400).map(_day),
            "kind": st.sampled_from(["home_visit", "office_visit", "phone"]),
            "plan_on_track": st.booleans(),
        }
    ),
    p.Close: st.fixed_dictionaries(
        {
            "outcome": st.sampled_from(["reintegrated", "partially_reintegrated", "lost_contact"]),
            "reason": REASONS,
        }
    ),
    # Another office, the case's own two (refused by a guard) or one that does not exist.
    p.RedirectHandover: st.fixed_dictionaries(
        {"destination_office": st.sampled_from(["riga", "kyiv", "tallinn", "oslo"]), "reason": REASONS}
    ),
}


def _registration(data: st.DataObject, origin: str, destination: str) -> dict[str, Any]:
    others = data.draw(st.lists(st.sampled_from(HOUSEHOLD[1:]), unique_by=lambda m: m["full_name"]))
    return {
        **REGISTRATION,
        "origin_office": origin,
        "destination_office": destination,
        "language": data.draw(st.sampled_from(["uk", "en", "ru"])),
        "channel": data.draw(st.sampled_from(["walk_in", "phone", "referral"])),
        "members": [HOUSEHOLD[0], *others],
    }


def _draft_plan(data: st.DataObject, view: dict[str, Any]) -> dict[str, Any]:
    ids = [m["id"] for m in view["members"]]
    if data.draw(st.integers(0, 9)) == 0:
        ids.append(str(uuid.uuid4()))  # someone outside the household: the guard refuses
    lines = data.draw(
        st.lists(
            st.tuples(
                st.sampled_from(ids),
                st.sampled_from(["business", "education", "housing"]),
                st.sampled_from(["700.00", "2000.00", "150.50"]),
            ),
            min_size=1,
            max_size=4,
            unique_by=lambda line: (line[0], line[1]),
        )
    )
    return {
        "currency": "EUR",
        "lines": [
            {"member_id": member, "category": category, "amount": amount, "purpose": "plan line"}
            for member, category, amount in lines
        ],
    }


def _request_disbursement(data: st.DataObject, view: dict[str, Any]) -> dict[str, Any]:
    plan = view["plan"]
    if plan and data.draw(st.integers(0, 9)) > 0:
        line = data.draw(st.sampled_from(plan["lines"]))
        remaining = Decimal(line["remaining"].split()[0])  # "2000.00 EUR": what may still be requested
        amounts = ["50.00", str(remaining), str(remaining + Decimal("0.01")), "10000.00"]
        line_id = line["id"]
    else:
        amounts, line_id = ["50.00"], str(uuid.uuid4())
    return {
        "budget_line_id": line_id,
        "amount": data.draw(st.sampled_from(amounts)),
        "currency": "EUR",
        "vendor": "Budmarket hardware",
        "kind": data.draw(st.sampled_from(["in_kind", "in_kind", "in_kind", "cash"])),
    }


def _about_a_disbursement(data: st.DataObject, view: dict[str, Any], shape: type) -> dict[str, Any]:
    """A disbursement of the case in any status (the guards refuse the wrong ones), or a stranger."""
    known = [d["id"] for d in (view["plan"] or {}).get("disbursements", ())]
    stranger = not known or data.draw(st.integers(0, 9)) == 0
    payload: dict[str, Any] = {
        "disbursement_id": str(uuid.uuid4()) if stranger else data.draw(st.sampled_from(known))
    }
    if shape is p.RejectDisbursement:
        payload["reason"] = data.draw(REASONS)
    if shape is p.RecordReceipt:
        payload["receipt_ref"] = data.draw(st.sampled_from(["R-1", "R-2"]))
    return payload


def _junk(data: st.DataObject, valid: Any) -> tuple[Any, bool]:
    """A payload that is wrong; the flag says the engine must refuse it whatever the trigger."""
    kind = data.draw(st.integers(0, 4))
    if kind == 0:  # an unknown key, alone or next to valid fields
        base = valid if isinstance(valid, dict) else {}
        key = data.draw(st.sampled_from(["state", "version", "owner_office", "teleport"]))
        return {**base, key: data.draw(st.sampled_from(["closed", 99, None]))}, True
    if kind == 1:  # not a JSON object
        return data.draw(st.sampled_from([[], ["reason"], "closed", 42, True, [{"reason": "x"}]])), True
    if kind == 2 and isinstance(valid, dict) and valid:  # a known field of the wrong type
        key = data.draw(st.sampled_from(sorted(valid)))
        return {**valid, key: data.draw(st.sampled_from([{"nested": 1}, [1, 2], -7]))}, False
    junk = data.draw(
        st.dictionaries(
            st.sampled_from(["reason", "amount", "currency", "arrived_on", "lines", "x"]),
            st.one_of(st.none(), st.integers(-5, 5), st.text(max_size=4), st.booleans()),
            max_size=3,
        )
    )
    return junk, False


# -- the database side --------------------------------------------------------------------------


def snapshot(conn: Connection, case_ids: Iterable[str]) -> Snapshot:
    """Row counts of every table, every row of the given cases, and every row of the other tables.

    A cheaper stand-in for ``snapshot_tables``: cases of earlier examples stay in the database,
    and a refusal that wrote to any of them would still show in the counts."""
    ids = sorted(set(case_ids))
    counts = tuple(
        conn.execute(
            select(
                *(
                    select(func.count()).select_from(table).scalar_subquery()
                    for table in tb.metadata.sorted_tables
                )
            )
        ).one()
    )
    rows: dict[tuple[str, str], list[tuple[Any, ...]]] = {}
    for table, column in CASE_TABLES:
        position = list(table.c).index(column)
        for row in conn.execute(select(table).where(column.in_(ids))):
            rows.setdefault((table.name, row[position]), []).append(tuple(row))
    for table in OTHER_TABLES:
        rows[(table.name, "")] = [tuple(row) for row in conn.execute(select(table))]
    return counts, {key: sorted(value, key=lambda r: tuple(map(str, r))) for key, value in rows.items()}


# Derived from every case at once (counts by state and office, kept by the database): a commit
# to one case moves them, so they are checked against the cases instead (check_counts).
DERIVED = {("case_counts", "")}


def without_case(snap: Snapshot, case_id: str) -> dict[tuple[str, str], list[tuple[Any, ...]]]:
    return {key: rows for key, rows in snap[1].items() if key[1] != case_id and key not in DERIVED}


def check_counts(conn: Connection) -> None:
    """The kept counts equal counting the cases, per state and owning office."""
    k, c = tb.case_counts.c, tb.cases.c
    kept = conn.execute(select(k.state, k.office, func.sum(k.cases)).group_by(k.state, k.office))
    counted = conn.execute(select(c.state, c.owner_office, func.count()).group_by(c.state, c.owner_office))
    assert {(s, o): int(n) for s, o, n in kept if n} == {(s, o): int(n) for s, o, n in counted}


def check_case(conn: Connection, case_id: str, model: CaseModel) -> None:
    case = conn.execute(select(tb.cases).where(tb.cases.c.id == case_id)).mappings().one()
    h = tb.case_history.c
    history = conn.execute(select(tb.case_history).where(h.case_id == case_id).order_by(h.version))
    history = list(history.mappings())
    o = tb.outbox.c
    outbox = list(conn.execute(select(tb.outbox).where(o.case_id == case_id)).mappings())
    t = tb.timers.c
    timers = conn.execute(
        select(t.name, t.state, t.created_at).where(t.case_id == case_id, t.status == "pending")
    )
    timers = list(timers)

    # The model agrees with the database: history is exactly the fires that committed.
    assert (case["state"], case["version"]) == (model.state, model.version)
    assert [(row["trigger"], row["actor_id"]) for row in history] == model.fired
    assert case["lifecycle_version"] == LIFECYCLE.version

    # The case's state is where its history ends; versions run 1..version without gaps.
    assert history, "a case without history"
    assert case["state"] == history[-1]["to_state"]
    assert [row["version"] for row in history] == list(range(1, case["version"] + 1))

    # Each row starts where the previous one ended and follows an edge of the lifecycle.
    previous = None
    for row in history:
        transition = LIFECYCLE.by_trigger[row["trigger"]]
        source = row["from_state"] or LIFECYCLE.initial
        assert row["from_state"] == previous, (row["version"], row["from_state"], previous)
        assert source in transition.sources
        assert row["to_state"] == transition.target(source)
        previous = row["to_state"]

    # Every committed transition has exactly its events, at its version; nothing else.
    expected = Counter(
        (row["version"], event) for row in history for event in LIFECYCLE.by_trigger[row["trigger"]].events
    )
    assert Counter((e["case_version"], e["event_type"]) for e in outbox) == expected
    by_version = {row["version"]: row for row in history}
    for message in outbox:
        row = by_version[message["case_version"]]
        data = message["payload"]
        assert data["trigger"] == row["trigger"]
        assert data["to_state"] == row["to_state"]
        assert data["from_state"] == row["from_state"]

    # The deadlines of the current state, and no others, are pending: each
    # armed when the case last entered the state or a transition restarted its timers.
    deadlines = LIFECYCLE.by_state[case["state"]].deadlines
    assert Counter((name, state) for name, state, _ in timers) == Counter(
        (d.name, case["state"]) for d in deadlines
    )
    armed = next(
        row["occurred_at"]
        for row in reversed(history)
        if row["from_state"] != row["to_state"] or LIFECYCLE.by_trigger[row["trigger"]].restart_timers
    )
    assert all(created == armed for _, _, created in timers), (timers, armed)


def event_ids(conn: Connection, case_id: str, version: int) -> set[str]:
    o = tb.outbox.c
    return set(conn.scalars(select(o.event_id).where(o.case_id == case_id, o.case_version == version)))


# -- the state machine --------------------------------------------------------------------------


class EngineMachine(RuleBasedStateMachine):
    def __init__(self, app: App, clock: FixedClock) -> None:
        super().__init__()
        self.app, self.clock = app, clock
        self.cases: dict[str, CaseModel] = {}
        self.key_prefix = uuid.uuid4().hex[:8]  # keys of earlier examples stay in the database
        self.key_calls: dict[str, Call] = {}  # a key, and the request it last answered (or was sent with)
        self.key_results: dict[str, tuple[str, FireResult]] = {}  # keys whose request committed

    # Rules ---------------------------------------------------------------------------------------

    @initialize(data=st.data())
    def start_along_the_story(self, data: st.DataObject) -> None:
        """A case walked some way along the seed story, so that deep states get explored too."""
        steps = data.draw(st.integers(0, len(STEPS)), label="story steps")
        call = Call(None, REGISTER, TLL_CASEWORKER, REGISTRATION)
        self._execute(call, None)
        case_id = next(iter(self.cases))
        for step in STEPS[:steps]:
            payload = step.payload
            if callable(payload):
                payload = payload(self._view(case_id))
            self._execute(Call(case_id, step.trigger, step.actor, payload), None)
        assert self.cases[case_id].version == steps + 1

    @precondition(lambda self: len(self.cases) < 4)
    @rule(data=st.data())
    def register(self, data: st.DataObject) -> None:
        origin, destination = data.draw(st.sampled_from(ROUTES))
        payload: Any = _registration(data, origin, destination)
        actor = CASEWORKER_OF[origin]
        must_fail = False
        if data.draw(st.integers(0, 9)) >= 7:
            actor = data.draw(st.sampled_from(ACTORS))
        if data.draw(st.integers(0, 9)) >= 8:
            kind = data.draw(st.integers(0, 4))
            if kind == 0:
                payload = {**payload, "origin_office": "oslo"}  # no such office
            elif kind == 1:
                payload = {**payload, "destination_office": origin}
            elif kind == 2:
                payload = {**payload, "members": HOUSEHOLD[1:]}  # no principal
            else:
                payload, must_fail = _junk(data, payload)
        self._execute(Call(None, REGISTER, actor, payload, must_fail=must_fail), self._key(data))

    @precondition(lambda self: self.cases)
    @rule(data=st.data())
    def fire_random(self, data: st.DataObject) -> None:
        """Any trigger, actor, payload and version: mostly the plausible ones."""
        self._fire(data, plausible=False)

    @precondition(lambda self: self.cases)
    @rule(data=st.data())
    def fire_plausible(self, data: st.DataObject) -> None:
        """An allowed trigger by an actor who may fire it, with a valid payload: moves cases along."""
        self._fire(data, plausible=True)

    @precondition(lambda self: self.key_calls)
    @rule(data=st.data())
    def resend(self, data: st.DataObject) -> None:
        """The same request with the same idempotency key: replayed if it committed."""
        key = data.draw(st.sampled_from(list(self.key_calls)))
        self._execute(self.key_calls[key], key)

    def teardown(self) -> None:
        with self.app.db.connect() as conn:
            for case_id, model in self.cases.items():
                check_case(conn, case_id, model)

    # Drawing a call -------------------------------------------------------------------------------

    def _fire(self, data: st.DataObject, plausible: bool) -> None:
        if not plausible and data.draw(st.integers(0, 19), label="unknown case") == 19:
            trigger = data.draw(st.sampled_from(TRIGGERS), label="trigger")
            actor = data.draw(st.sampled_from(ACTORS), label="actor")
            self._execute(Call(str(uuid.uuid4()), trigger, actor, {}), self._key(data))
            return
        case_id = data.draw(st.sampled_from(list(self.cases)), label="case")  # in order of creation
        model = self.cases[case_id]
        allowed = LIFECYCLE.allowed_triggers(model.state)
        if allowed and (plausible or data.draw(st.integers(0, 9)) < 7):
            trigger = data.draw(st.sampled_from(allowed), label="trigger")
        else:
            trigger = data.draw(st.sampled_from(TRIGGERS), label="trigger")
        transition = LIFECYCLE.by_trigger.get(trigger)

        capable = [
            a for a in ACTORS if transition and may_fire(transition, a, model.origin, model.destination)
        ]
        if capable and (plausible or data.draw(st.integers(0, 9)) < 7):
            actor = data.draw(st.sampled_from(capable), label="actor")
        else:
            actor = data.draw(st.sampled_from(ACTORS), label="actor")

        payload = self._valid_payload(data, case_id, transition)
        must_fail = False
        if not plausible and data.draw(st.integers(0, 9), label="junk payload") >= 7:
            payload, must_fail = _junk(data, payload)

        versions = (None, model.version, model.version - 1, model.version + 1)
        choice = data.draw(st.integers(0, 9), label="expected version")  # None, current, stale, ahead
        expected_version = versions[0 if choice < 5 else 1 if choice < 8 or plausible else choice - 6]
        call = Call(case_id, trigger, actor, payload, expected_version, must_fail)
        self._execute(call, self._key(data))

    def _valid_payload(self, data: st.DataObject, case_id: str, t: Transition | None) -> Any:
        if t is None:
            return {}
        story = STORY_PAYLOADS.get(t.trigger)
        if story is not None and data.draw(st.booleans(), label="story payload"):
            if not callable(story):
                return story
            try:
                return story(self._view(case_id))
            except (ValueError, IndexError, TypeError):
                pass  # the builder needs a plan or household like the story's
        if t.payload is p.DraftPlan:
            return _draft_plan(data, self._view(case_id))
        if t.payload is p.RequestDisbursement:
            return _request_disbursement(data, self._view(case_id))
        if t.payload in (p.ApproveDisbursement, p.RejectDisbursement, p.RecordReceipt):
            return _about_a_disbursement(data, self._view(case_id), t.payload)
        if t.payload is p.ReceiveHandover:  # opens a case: refused at an existing one before its payload
            return {}
        if t.payload is p.RegisterInquiry:  # fired at an existing case: never allowed
            model = self.cases[case_id]
            return _registration(data, model.origin, model.destination)
        return data.draw(FIXED_SHAPES[t.payload], label="payload")

    def _view(self, case_id: str) -> dict[str, Any]:
        """The case view with its plan lines in the order they were drafted (member, category).

        The engine returns budget lines in no particular order (no ORDER BY; on PostgreSQL an
        approved disbursement can move its line to the end), while the seed story picks lines by index."""
        view = self.app.views.case(case_id)
        if view["plan"]:
            members = [m["id"] for m in view["members"]]
            view["plan"]["lines"].sort(key=lambda line: (members.index(line["member_id"]), line["category"]))
        return view

    def _key(self, data: st.DataObject) -> str | None:
        choice = data.draw(st.integers(0, 9), label="idempotency key")
        if choice < 6:
            return None
        if choice < 8 or not self.key_calls:
            return f"{self.key_prefix}-{len(self.key_calls)}"
        return data.draw(st.sampled_from(list(self.key_calls)))  # reused for this (new) request

    # Running a call and checking what it did ----------------------------------------------------

    def _execute(self, call: Call, key: str | None) -> None:
        involved = [*self.cases, *([call.case_id] if call.case_id else [])]
        with self.app.db.connect() as conn:
            before = snapshot(conn, involved)
        self.clock.advance(minutes=7)
        prior = self.key_results.get(key) if key else None
        if key and key not in self.key_results:
            self.key_calls[key] = call
        try:
            if call.case_id is None:
                result = self.app.transitions.create_case(call.actor, call.payload, idempotency_key=key)
            else:
                result = self.app.transitions.fire(
                    call.case_id,
                    call.trigger,
                    call.actor,
                    call.payload,
                    expected_version=call.expected_version,
                    idempotency_key=key,
                )
        except DomainError as exc:
            with self.app.db.connect() as conn:
                after = snapshot(conn, involved)
            assert after == before, f"the refused {call} ({exc!r}) changed rows"
            event(f"refused: {type(exc).__name__}")
            self._check_refusal(call, exc, prior)
            return

        if prior is not None:  # an idempotency key answered before
            signature, first = prior
            assert signature == call.signature(), f"{key} reused for another request, yet {result}"
            assert result == dataclasses.replace(first, replayed=True)
            with self.app.db.connect() as conn:
                after = snapshot(conn, involved)
            assert after == before, f"the replayed {call} changed rows"
            event("replayed")
            return

        self._check_commit(call, result)
        event(f"committed, now in {result.to_state}")
        if key:
            self.key_results[key] = (call.signature(), result)
            self.key_calls[key] = call
        with self.app.db.connect() as conn:
            after = snapshot(conn, [*involved, result.case_id])
            assert without_case(after, result.case_id) == without_case(before, result.case_id), (
                f"{call} changed rows of other cases"
            )
            check_case(conn, result.case_id, self.cases[result.case_id])
            check_counts(conn)
            assert set(result.event_ids) == event_ids(conn, result.case_id, result.version)

    def _reasons_to_refuse(self, call: Call) -> set[type[DomainError]]:
        """The refusals that follow from the request and the model alone."""
        if call.case_id is None:
            return set()
        model = self.cases.get(call.case_id)
        # In the engine's order: nothing about a case leaks before the caller may act on it.
        if model is None or not visible(call.actor, model):
            return {UnknownCase}
        transition = LIFECYCLE.by_trigger.get(call.trigger)
        if transition is None:
            return {UnknownTrigger}
        if not may_fire(transition, call.actor, model.origin, model.destination):
            return {PermissionDenied}
        if call.expected_version is not None and call.expected_version != model.version:
            return {VersionConflict}
        if model.state not in transition.sources:
            return {TransitionNotAllowed}
        return set()

    def _check_refusal(self, call: Call, exc: DomainError, prior: tuple[str, FireResult] | None) -> None:
        if prior is not None and prior[0] != call.signature():
            assert isinstance(exc, IdempotencyKeyReused), f"{call}: {exc!r} for a reused key"
            return
        assert prior is None, f"{call}: {exc!r} instead of the replayed answer {prior[1]}"
        assert not isinstance(exc, IdempotencyKeyReused), f"{call}: {exc!r} for a fresh key"
        reasons = self._reasons_to_refuse(call)
        if reasons:
            assert type(exc) in reasons, f"{call}: {exc!r}, expected one of {reasons}"
        else:
            others: tuple[type[DomainError], ...] = (InvalidPayload, GuardFailed, BudgetExceeded)
            if call.case_id is None:  # registration: the office comes from the payload
                others = (*others, PermissionDenied)
            assert isinstance(exc, others), f"{call}: unexpected {exc!r}"

    def _check_commit(self, call: Call, result: FireResult) -> None:
        assert not result.replayed
        assert not call.must_fail, f"{call} committed with a payload the engine must refuse"
        assert not self._reasons_to_refuse(call), f"{call} committed: {result}"
        transition = LIFECYCLE.by_trigger[call.trigger]
        if call.case_id is None:
            model = CaseModel(call.payload["origin_office"], call.payload["destination_office"])
            assert result.case_id not in self.cases
        else:
            model = self.cases[call.case_id]
            assert result.case_id == call.case_id
        assert may_fire(transition, call.actor, model.origin, model.destination), (
            f"{call.actor} may not {call.trigger}, yet {result}"
        )
        target = transition.target(model.state)
        from_state = None if model.state == LIFECYCLE.initial else model.state
        assert (result.trigger, result.from_state, result.to_state, result.version) == (
            call.trigger,
            from_state,
            target,
            model.version + 1,
        )
        model.state, model.version = target, model.version + 1
        if call.trigger == "redirect_handover":  # the case has another destination office now
            assert call.payload["destination_office"] not in (model.origin, model.destination, "oslo")
            model.destination = call.payload["destination_office"]
        model.fired.append((call.trigger, call.actor.id))
        # A redirect unshares the case: its new office sees it from the handover sent to it.
        model.shared = call.trigger != "redirect_handover" and (model.shared or call.trigger in SHARING)
        self.cases[result.case_id] = model


def _run(db_url: str, examples: int, steps: int) -> None:
    clock = FixedClock()
    app = make_app(db_url, clock)
    try:
        run_state_machine_as_test(
            lambda: EngineMachine(app, clock),
            settings=settings(
                max_examples=examples,
                stateful_step_count=steps,
                deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
            ),
        )
    finally:
        app.db.dispose()


def test_random_fires_keep_state_history_and_outbox_consistent(db_url: str) -> None:
    _run(db_url, examples=30, steps=30)
