"""Grants over HTTP: four eyes on every tranche, budgets never overspent, receipts, the plan, the
disbursements and the family's contributions as read models, and the money rate limit."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx import Response

from tests.api.conftest import api_client, bearer, token_for
from tests.support import advance_to
from workflow.bootstrap import App
from workflow.demo import TLL_APPROVER
from workflow.domain.actors import Role

FINANCE, CASEWORKER = Role.FINANCE_OFFICER, Role.CASEWORKER


def fire(
    api: TestClient, token: str, case_id: str, trigger: str, body: dict[str, Any] | None = None
) -> Response:
    """Fires with the case's current version as If-Match, as a client that just read it would."""
    etag = api.get(f"/cases/{case_id}", headers=bearer(token)).headers["ETag"]
    return api.post(
        f"/cases/{case_id}/transitions/{trigger}",
        json=body or {},
        headers=bearer(token) | {"If-Match": etag},
    )


def plan(api: TestClient, token: str, case_id: str) -> dict[str, Any]:
    response = api.get(f"/cases/{case_id}/plan", headers=bearer(token))
    assert response.status_code == 200, response.json()
    return response.json()  # type: ignore[no-any-return]


def request_tranche(api: TestClient, token: str, case_id: str, line: int, amount: str) -> str:
    """Requests a tranche on the plan's ``line``-th budget line; returns the disbursement's id."""
    line_id = plan(api, token, case_id)["lines"][line]["id"]
    body = {"budget_line_id": line_id, "amount": amount, "currency": "EUR", "vendor": "Budmarket"}
    response = fire(api, token, case_id, "request_disbursement", body)
    assert response.status_code == 200, response.json()
    listed = api.get(f"/cases/{case_id}/disbursements", headers=bearer(token)).json()
    return str(listed[-1]["id"])


@pytest.fixture
def case_id(app: App) -> str:
    return advance_to(app, "plan_approved")


@pytest.fixture
def requester(app: App) -> str:
    return token_for(app, "kyiv-finance-a", "kyiv", FINANCE)


@pytest.fixture
def approver(app: App) -> str:
    return token_for(app, "kyiv-finance-b", "kyiv", FINANCE)


def test_whoever_requested_a_tranche_cannot_approve_it(
    api: TestClient, case_id: str, requester: str, approver: str
) -> None:
    tranche = request_tranche(api, requester, case_id, 0, "1450.00")

    refused = fire(api, requester, case_id, "approve_disbursement", {"disbursement_id": tranche})

    assert refused.status_code == 409
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["type"] == "/problems/guard_failed"
    assert refused.json()["reasons"] == ["four eyes: whoever requested a disbursement cannot approve it"]
    assert plan(api, requester, case_id)["lines"][0]["disbursed"] == "0.00"

    approved = fire(api, approver, case_id, "approve_disbursement", {"disbursement_id": tranche})
    assert approved.status_code == 200
    assert approved.json()["to_state"] == "disbursing"
    line = plan(api, approver, case_id)["lines"][0]
    assert (line["requested"], line["disbursed"], line["remaining"]) == ("0.00", "1450.00", "550.00")


def test_the_approver_of_the_plan_cannot_approve_a_tranche_against_it(
    api: TestClient, app: App, case_id: str, requester: str
) -> None:
    tranche = request_tranche(api, requester, case_id, 1, "100.00")
    # The same person as the plan's approver, now with a finance role in the destination office.
    plan_approver = token_for(app, TLL_APPROVER.id, "kyiv", FINANCE)

    refused = fire(api, plan_approver, case_id, "approve_disbursement", {"disbursement_id": tranche})

    assert refused.status_code == 409
    assert refused.json()["type"] == "/problems/guard_failed"
    assert refused.json()["reasons"] == [
        "four eyes: the approver of this plan cannot approve disbursements against it"
    ]


def test_a_caseworker_may_request_but_only_a_finance_officer_may_approve(
    api: TestClient, app: App, case_id: str, approver: str
) -> None:
    caseworker = token_for(app, "kyiv-caseworker-c", "kyiv", CASEWORKER)
    tranche = request_tranche(api, caseworker, case_id, 2, "390.00")

    refused = fire(api, caseworker, case_id, "approve_disbursement", {"disbursement_id": tranche})
    assert refused.status_code == 403
    assert refused.json()["type"] == "/problems/permission_denied"
    assert (
        fire(api, approver, case_id, "approve_disbursement", {"disbursement_id": tranche}).status_code == 200
    )


def test_requests_beyond_what_the_line_has_left_are_refused(
    api: TestClient, case_id: str, requester: str
) -> None:
    request_tranche(api, requester, case_id, 2, "650.00")  # of 700.00, awaiting approval
    line_id = plan(api, requester, case_id)["lines"][2]["id"]
    body = {"budget_line_id": line_id, "amount": "50.01", "currency": "EUR", "vendor": "Budmarket"}

    refused = fire(api, requester, case_id, "request_disbursement", body)

    assert refused.status_code == 409
    assert refused.json()["type"] == "/problems/guard_failed"
    (reason,) = refused.json()["reasons"]
    assert "exceeds the 50.00 EUR left" in reason and "650.00 EUR requested" in reason
    line = plan(api, requester, case_id)["lines"][2]
    assert (line["allocated"], line["requested"], line["disbursed"], line["remaining"]) == (
        "700.00",
        "650.00",
        "0.00",
        "50.00",
    )


def test_cash_is_refused_while_the_programme_keeps_it_off(
    api: TestClient, case_id: str, requester: str
) -> None:
    line_id = plan(api, requester, case_id)["lines"][0]["id"]
    body = {"budget_line_id": line_id, "amount": "10.00", "currency": "EUR", "vendor": "v", "kind": "cash"}
    refused = fire(api, requester, case_id, "request_disbursement", body)
    assert refused.status_code == 409
    assert refused.json()["reasons"] == ["cash assistance is switched off for this programme"]


def test_receipts_settle_tranches_and_disbursement_completes_once_all_are_in(
    api: TestClient, case_id: str, requester: str, approver: str
) -> None:
    tranche = request_tranche(api, requester, case_id, 0, "1450.00")
    fire(api, approver, case_id, "approve_disbursement", {"disbursement_id": tranche})
    early = fire(api, requester, case_id, "complete_disbursement")
    assert early.status_code == 409
    assert early.json()["reasons"] == [f"approved disbursements have no receipt yet: {tranche}"]

    receipt = {"disbursement_id": tranche, "receipt_ref": "R-1001"}
    assert fire(api, requester, case_id, "record_receipt", receipt).status_code == 200
    again = fire(api, requester, case_id, "record_receipt", receipt | {"receipt_ref": "R-1002"})
    assert again.status_code == 409
    assert again.json()["reasons"] == [f"disbursement {tranche} is receipted, not approved"]

    (listed,) = api.get(f"/cases/{case_id}/disbursements", headers=bearer(requester)).json()
    assert {k: listed[k] for k in ("status", "amount", "currency", "kind", "vendor", "receipt_ref")} == {
        "status": "receipted",
        "amount": "1450.00",
        "currency": "EUR",
        "kind": "in_kind",
        "vendor": "Budmarket",
        "receipt_ref": "R-1001",
    }
    assert (listed["requested_by"], listed["approved_by"], listed["receipt_recorded_by"]) == (
        "kyiv-finance-a",
        "kyiv-finance-b",
        "kyiv-finance-a",
    )
    assert listed["category"] == "business" and listed["approved_at"] and listed["receipt_recorded_at"]
    assert fire(api, requester, case_id, "complete_disbursement").json()["to_state"] == "monitoring"


def test_a_rejected_request_frees_its_amount(
    api: TestClient, case_id: str, requester: str, approver: str
) -> None:
    tranche = request_tranche(api, requester, case_id, 3, "700.00")
    rejected = fire(
        api, approver, case_id, "reject_disbursement", {"disbursement_id": tranche, "reason": "duplicate"}
    )
    assert rejected.status_code == 200
    (listed,) = api.get(f"/cases/{case_id}/disbursements", headers=bearer(approver)).json()
    assert (listed["status"], listed["rejected_by"]) == ("rejected", "kyiv-finance-b")
    assert plan(api, approver, case_id)["lines"][3]["remaining"] == "700.00"
    late = fire(api, approver, case_id, "approve_disbursement", {"disbursement_id": tranche})
    assert late.json()["reasons"] == [f"disbursement {tranche} is rejected, not requested"]


def test_the_plan_lists_lines_and_member_totals(api: TestClient, case_id: str, requester: str) -> None:
    shown = plan(api, requester, case_id)

    assert (shown["currency"], shown["approved_by"]) == ("EUR", TLL_APPROVER.id)
    assert [(line["category"], line["allocated"]) for line in shown["lines"]] == [
        ("business", "2000.00"),
        ("business", "2000.00"),
        ("education", "700.00"),
        ("education", "700.00"),
    ]
    assert [m["relationship"] for m in shown["members"]] == ["principal", "spouse", "child", "child"]
    assert shown["total"] == {
        "allocated": "5400.00",
        "requested": "0.00",
        "disbursed": "0.00",
        "remaining": "5400.00",
    }


def test_contributions_are_the_familys_own_money_beside_the_plan(
    api: TestClient, app: App, case_id: str
) -> None:
    caseworker = token_for(app, "kyiv-caseworker-c", "kyiv", CASEWORKER)
    body = {"amount": "900.00", "currency": "EUR", "purpose": "rent of the premises"}
    assert fire(api, caseworker, case_id, "record_contribution", body).status_code == 200

    (listed,) = api.get(f"/cases/{case_id}/contributions", headers=bearer(caseworker)).json()
    assert (listed["amount"], listed["currency"], listed["recorded_by"]) == (
        "900.00",
        "EUR",
        "kyiv-caseworker-c",
    )
    assert plan(api, caseworker, case_id)["total"]["disbursed"] == "0.00"  # never counted as grant


@pytest.mark.parametrize("path", ["plan", "disbursements", "contributions"])
def test_another_offices_case_is_unknown(api: TestClient, app: App, case_id: str, path: str) -> None:
    stranger = token_for(app, "riga-finance", "riga", FINANCE)
    response = api.get(f"/cases/{case_id}/{path}", headers=bearer(stranger))
    assert response.status_code == 404
    assert response.json()["type"] == "/problems/unknown_case"


def test_a_case_without_a_plan_answers_not_found(api: TestClient, app: App) -> None:
    case_id = advance_to(app, "inquiry")
    caseworker = token_for(app, "tll-caseworker-x", "tallinn", CASEWORKER)
    response = api.get(f"/cases/{case_id}/plan", headers=bearer(caseworker))
    assert response.status_code == 404
    assert response.json()["type"] == "/problems/not_found"
    assert api.get(f"/cases/{case_id}/disbursements", headers=bearer(caseworker)).json() == []


def test_money_endpoints_and_transitions_are_rate_limited_per_actor(app: App, case_id: str) -> None:
    busy = token_for(app, "kyiv-finance-busy", "kyiv", FINANCE)
    other = token_for(app, "kyiv-finance-other", "kyiv", FINANCE)
    with api_client(app, rate_limit_money="3/minute") as api:
        reads = [api.get(f"/cases/{case_id}/{p}", headers=bearer(busy)) for p in ("plan", "disbursements")]
        line_id = reads[0].json()["lines"][0]["id"]
        body = {"budget_line_id": line_id, "amount": "10.00", "currency": "EUR", "vendor": "v"}
        spent = fire(api, busy, case_id, "request_disbursement", body)  # the third hit
        limited_read = api.get(f"/cases/{case_id}/contributions", headers=bearer(busy))
        limited_fire = fire(api, busy, case_id, "request_disbursement", body)
        case_read = api.get(f"/cases/{case_id}", headers=bearer(busy))  # not a money endpoint
        someone_else = api.get(f"/cases/{case_id}/plan", headers=bearer(other))

    assert [r.status_code for r in reads] == [200, 200]
    assert spent.status_code == 200
    for limited in (limited_read, limited_fire):
        assert limited.status_code == 429
        assert limited.json()["type"] == "/problems/rate_limited"
        assert int(limited.headers["retry-after"]) >= 1
    assert case_read.status_code == 200
    assert someone_else.status_code == 200
    assert len(someone_else.json()["lines"]) == 4
    assert someone_else.json()["total"]["requested"] == "10.00"  # the limited fire changed nothing
