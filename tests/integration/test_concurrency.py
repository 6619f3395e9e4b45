"""Concurrent writers on PostgreSQL: the database, not Python, keeps versions and budgets right."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import func, select

from tests.support import advance_to, register
from workflow.adapters import tables as tb
from workflow.adapters.repository import SqlCaseRepository
from workflow.bootstrap import App
from workflow.demo import KBP_CASEWORKER, KBP_FINANCE, KBP_FINANCE_LEAD, TLL_CASEWORKER
from workflow.domain.changes import Disbursed, DisbursementRequested
from workflow.domain.errors import BudgetExceeded, DomainError, GuardFailed, VersionConflict
from workflow.domain.money import Money
from workflow.domain.plan import Disbursement

pytestmark = pytest.mark.postgres
ELIGIBLE = {"nationality": "UA", "consent_signed_on": "2026-11-01", "travel_document": "present"}


def _race(n: int, call: Callable[[int], Any]) -> list[Any]:
    """Runs ``call`` in n threads released together; returns results or the DomainErrors raised."""
    barrier = threading.Barrier(n)

    def run(i: int) -> Any:
        barrier.wait()
        try:
            return call(i)
        except DomainError as error:
            return error

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


def _history_versions(app: App, case_id: str) -> list[int]:
    with app.db.connect() as conn:
        h = tb.case_history.c
        return list(conn.scalars(select(h.version).where(h.case_id == case_id).order_by(h.version)))


def test_twenty_fires_at_one_version_one_wins_the_rest_conflict(pg_app: App) -> None:
    case_id = register(pg_app).case_id

    outcomes = _race(
        20,
        lambda i: pg_app.transitions.fire(
            case_id, "record_eligibility", TLL_CASEWORKER, ELIGIBLE, expected_version=1
        ),
    )

    kinds = Counter(type(o).__name__ for o in outcomes)
    assert kinds == {"FireResult": 1, "VersionConflict": 19}
    assert _history_versions(pg_app, case_id) == [1, 2]
    assert all(o.actual == 2 for o in outcomes if isinstance(o, VersionConflict))


def test_concurrent_fires_without_a_version_never_leave_a_gap(pg_app: App) -> None:
    case_id = register(pg_app).case_id

    outcomes = _race(
        12, lambda i: pg_app.transitions.fire(case_id, "record_eligibility", TLL_CASEWORKER, ELIGIBLE)
    )

    won = [o for o in outcomes if not isinstance(o, DomainError)]
    assert won, "at least the first writer wins"
    assert all(isinstance(o, VersionConflict) for o in outcomes if o not in won)
    assert sorted(o.version for o in won) == list(range(2, len(won) + 2))
    assert _history_versions(pg_app, case_id) == list(range(1, len(won) + 2))


def test_two_requests_that_together_overspend_one_is_refused(pg_app: App) -> None:
    case_id = advance_to(pg_app, "plan_approved")
    line = pg_app.views.case(case_id)["plan"]["lines"][2]  # 700.00 EUR
    finance = [KBP_FINANCE, KBP_CASEWORKER]
    payload = {"budget_line_id": line["id"], "amount": "400.00", "currency": "EUR", "vendor": "v"}

    outcomes = _race(
        2, lambda i: pg_app.transitions.fire(case_id, "request_disbursement", finance[i], payload)
    )

    won = [o for o in outcomes if not isinstance(o, DomainError)]
    refused = [o for o in outcomes if isinstance(o, DomainError)]
    assert len(won) == 1
    # Refused by the version check or, had it read the other request, by the budget.
    assert len(refused) == 1 and isinstance(refused[0], VersionConflict | GuardFailed)
    assert pg_app.views.case(case_id)["plan"]["lines"][2]["requested"] == "400.00 EUR"


def test_two_approvals_of_one_request_move_the_money_once(pg_app: App) -> None:
    case_id = advance_to(pg_app, "plan_approved")
    line = pg_app.views.case(case_id)["plan"]["lines"][2]
    payload = {"budget_line_id": line["id"], "amount": "400.00", "currency": "EUR", "vendor": "v"}
    pg_app.transitions.fire(case_id, "request_disbursement", KBP_CASEWORKER, payload)
    approval = {"disbursement_id": pg_app.views.case(case_id)["plan"]["disbursements"][0]["id"]}
    finance = [KBP_FINANCE, KBP_FINANCE_LEAD]

    outcomes = _race(
        2, lambda i: pg_app.transitions.fire(case_id, "approve_disbursement", finance[i], approval)
    )

    assert sum(not isinstance(o, DomainError) for o in outcomes) == 1
    assert all(isinstance(o, VersionConflict | GuardFailed) for o in outcomes if isinstance(o, DomainError))
    assert pg_app.views.case(case_id)["plan"]["lines"][2]["disbursed"] == "400.00 EUR"


def test_the_database_refuses_an_overspend_that_python_checks_would_miss(pg_app: App) -> None:
    """Two transactions both pass the Python check on a stale read; the CHECK constraint stops one."""
    case_id = advance_to(pg_app, "plan_approved")
    line_id = pg_app.views.case(case_id)["plan"]["lines"][2]["id"]  # 700.00 EUR
    amount = Money.from_minor(40000, "EUR")
    with pg_app.uow() as uow:  # two requests of 400.00, written past the guards that would refuse one
        repo = uow.cases
        assert isinstance(repo, SqlCaseRepository)
        case = repo.get(case_id)
        assert case is not None
        for i in range(2):
            d = Disbursement(f"d-{i}", line_id, amount, "in_kind", "v", "kyiv-caseworker", pg_app_now(), i)
            case.changes.append(DisbursementRequested(d))
        repo._persist(case)
        uow.commit()
    first_wrote, first_may_commit = threading.Event(), threading.Event()

    def spend(i: int) -> Any:
        if i == 1:
            first_wrote.wait(10)
        with pg_app.uow() as uow:
            repo = uow.cases
            assert isinstance(repo, SqlCaseRepository)
            case = repo.get(case_id)
            assert case is not None
            case.changes.append(Disbursed(f"d-{i}", line_id, amount, f"kyiv-finance-{i}", pg_app_now()))
            if i == 0:
                repo._persist(case)
                first_wrote.set()
                first_may_commit.wait(10)
            else:
                threading.Timer(0.3, first_may_commit.set).start()
                repo._persist(case)  # blocks on the row lock until the first commits
            uow.commit()
        return "ok"

    outcomes = _race(2, spend)

    assert outcomes[0] == "ok"
    assert isinstance(outcomes[1], BudgetExceeded)
    with pg_app.db.connect() as conn:
        assert (
            conn.scalar(select(tb.budget_lines.c.disbursed_minor).where(tb.budget_lines.c.id == line_id))
            == 40000
        )
        d = tb.disbursements.c
        assert (
            conn.scalar(select(func.count()).select_from(tb.disbursements).where(d.status == "approved")) == 1
        )


def pg_app_now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


def test_one_idempotency_key_raced_by_ten_requests_fires_once(pg_app: App) -> None:
    case_id = register(pg_app).case_id

    outcomes = _race(
        10,
        lambda i: pg_app.transitions.fire(
            case_id, "record_eligibility", TLL_CASEWORKER, ELIGIBLE, idempotency_key="race-1"
        ),
    )

    assert not [o for o in outcomes if isinstance(o, DomainError)], outcomes
    assert len({(o.version, o.event_ids) for o in outcomes}) == 1
    assert sum(not o.replayed for o in outcomes) == 1
    assert _history_versions(pg_app, case_id) == [1, 2]
