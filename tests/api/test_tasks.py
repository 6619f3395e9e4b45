"""Tasks over HTTP: an office's work list (scope, order, filters, pages) and completing a task
(who may, once, never a cancelled one); the tasks are made by the workers' own effect runner from
the case's real events. On SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from tests.api.conftest import bearer, token_for
from tests.support import FixedClock, advance_to, jobs_of, snapshot_tables
from workflow.adapters import tables as tb
from workflow.adapters.clock import SystemClock
from workflow.adapters.jobs import SqlJobStore
from workflow.adapters.notices import SqlFacts
from workflow.adapters.templates import default_templates
from workflow.bootstrap import App
from workflow.demo import TLL_TRAVEL
from workflow.domain.actors import Role
from workflow.domain.effects import CLOSE_TASKS, COMPLETE_TASKS, CREATE_TASK
from workflow.service_layer.effects import EffectRunner

# A well-formed cursor whose id, JSON-escaped, is a lone surrogate: no database can encode it.
LONE_SURROGATE_CURSOR = base64.urlsafe_b64encode(b'["2026-12-01","\\ud800"]').decode().rstrip("=")
ITEM_KEYS = {
    "id",
    "case_id",
    "kind",
    "status",
    "office",
    "due_on",
    "created_at",
    "completed_at",
    "completed_by",
}


def run_task_effects(app: App, case_id: str) -> None:
    """What the workers do with the case's events, as far as tasks go: each task opened or
    closed by its own job (no message sent: those effects are not run here)."""
    runner = EffectRunner(
        lambda: SqlJobStore(app.db, hold_connection=True),
        SystemClock(),
        5,
        facts=SqlFacts(app.db),
        channels={},
        renderer=default_templates(),
    )
    for job in jobs_of(app, case_id):
        if job.effect.split(":")[0] in (CREATE_TASK, CLOSE_TASKS, COMPLETE_TASKS):
            assert runner.run(job) == "done", job


def staff(app: App, office: str, role: Role = Role.CASEWORKER) -> dict[str, str]:
    return bearer(token_for(app, f"{office}-{role}", office, role))


def tasks(api: TestClient, headers: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    response = api.get("/tasks", params=params, headers=headers)
    assert response.status_code == 200, response.json()
    assert response.json()["next_cursor"] is None
    return response.json()["items"]  # type: ignore[no-any-return]


@pytest.fixture
def booked(app: App) -> str:
    """A case with travel booked, each event's tasks settled as the workers would as it happened:
    Tallinn was asked for travel documents (done when they were recorded) and a pre-arrival
    notice (due in 3 days), Kyiv for the airport reception (no date)."""
    return advance_to(app, "travel_booked", after_each=lambda case_id: run_task_effects(app, case_id))


def test_each_office_lists_its_own_open_tasks_soonest_due_first(
    app: App, api: TestClient, booked: str
) -> None:
    mine = tasks(api, staff(app, "tallinn"))
    assert [(t["kind"], t["office"], t["status"], t["case_id"], t["due_on"]) for t in mine] == [
        ("pre_arrival_notice", "tallinn", "open", booked, "2026-12-01")
    ]
    assert all(set(t) == ITEM_KEYS for t in mine)  # no names, no contacts
    # Recording the travel documents did what that task asked: done, by the event (no one's).
    done = tasks(api, staff(app, "tallinn"), status="done")
    assert [(t["kind"], t["due_on"], t["completed_by"]) for t in done] == [
        ("request_travel_documents", "2026-12-05", None)
    ]
    theirs = tasks(api, staff(app, "kyiv"))
    assert [(t["kind"], t["office"], t["due_on"]) for t in theirs] == [("airport_reception", "kyiv", None)]
    assert tasks(api, staff(app, "riga")) == []


def test_staff_complete_a_task_once_and_a_retry_answers_it_as_it_is(
    app: App, api: TestClient, clock: FixedClock, booked: str
) -> None:
    travel = bearer(token_for(app, TLL_TRAVEL.id, "tallinn", Role.TRAVEL_OFFICER))
    (notice,) = tasks(api, travel)
    done = api.post(f"/tasks/{notice['id']}/complete", headers=travel)
    assert done.status_code == 200, done.json()
    assert (done.json()["kind"], done.json()["status"], done.json()["completed_by"]) == (
        "pre_arrival_notice",
        "done",
        TLL_TRAVEL.id,
    )
    assert done.json()["completed_at"].startswith("2026-11-28T09:00:00")

    clock.advance(hours=2)
    again = api.post(f"/tasks/{notice['id']}/complete", headers=staff(app, "tallinn"))
    assert again.status_code == 200
    assert again.json() == done.json()  # not completed twice, nor by the second caller
    assert tasks(api, travel) == []
    assert {t["kind"] for t in tasks(api, travel, status="done")} == {
        "pre_arrival_notice",
        "request_travel_documents",
    }
    assert len(tasks(api, travel, status=["open", "done"])) == 2


@pytest.mark.parametrize(
    ("who", "code", "status"),
    [
        (("kyiv", Role.CASEWORKER), "unknown_task", 404),  # another office's task
        (("tallinn", Role.OPS), "permission_denied", 403),  # ops watch, staff do the work
    ],
)
def test_a_task_of_another_office_or_without_a_staff_role_is_refused_and_nothing_changes(
    app: App, api: TestClient, booked: str, who: tuple[str, Role], code: str, status: int
) -> None:
    task_id = tasks(api, staff(app, "tallinn"))[0]["id"]
    headers = staff(app, *who)
    before = snapshot_tables(app.db)
    refused = api.post(f"/tasks/{task_id}/complete", headers=headers)
    assert refused.status_code == status
    assert refused.json()["type"] == f"/problems/{code}"
    after = snapshot_tables(app.db)
    assert {k: v for k, v in after.items() if k != "access_log"} == {
        k: v for k, v in before.items() if k != "access_log"
    }


@pytest.mark.parametrize("task_id", ["00000000-0000-4000-8000-000000000000", "x" * 100, "not-a-task"])
def test_an_unknown_task_answers_404(app: App, api: TestClient, booked: str, task_id: str) -> None:
    refused = api.post(f"/tasks/{task_id}/complete", headers=staff(app, "tallinn"))
    assert refused.status_code == 404
    assert refused.json()["type"] == "/problems/unknown_task"


def test_a_task_cancelled_with_its_journey_cannot_be_completed(
    app: App, api: TestClient, booked: str
) -> None:
    app.transitions.fire(booked, "record_no_show", TLL_TRAVEL, {"reason": "missed the flight"})
    run_task_effects(app, booked)  # the no-show closes the journey's tasks
    assert [t["kind"] for t in tasks(api, staff(app, "kyiv"), status="cancelled")] == ["airport_reception"]
    notice = tasks(api, staff(app, "tallinn"), status="cancelled")
    assert [t["kind"] for t in notice] == ["pre_arrival_notice"]
    assert notice[0]["completed_by"] is None

    before = snapshot_tables(app.db)["tasks"]
    refused = api.post(f"/tasks/{notice[0]['id']}/complete", headers=staff(app, "tallinn"))
    assert refused.status_code == 409
    assert (refused.json()["type"], refused.json()["task_status"]) == ("/problems/task_closed", "cancelled")
    assert snapshot_tables(app.db)["tasks"] == before


def test_the_overdue_filter_finds_open_tasks_past_their_due_date(
    app: App, api: TestClient, clock: FixedClock, booked: str
) -> None:
    headers = staff(app, "tallinn")
    assert tasks(api, headers, overdue="true") == []
    assert [t["kind"] for t in tasks(api, headers, overdue="false")] == ["pre_arrival_notice"]
    clock.advance(days=8)  # the pre-arrival notice was due in 3 days, the documents in 7
    assert [t["kind"] for t in tasks(api, headers, overdue="true")] == ["pre_arrival_notice"]
    assert tasks(api, headers, overdue="false") == []
    # A done task is never overdue, however long ago its date passed.
    assert [t["kind"] for t in tasks(api, headers, status="done", overdue="false")] == [
        "request_travel_documents"
    ]
    # An undated task is never overdue, and is among the others.
    kyiv = staff(app, "kyiv")
    assert tasks(api, kyiv, overdue="true") == []
    assert [t["kind"] for t in tasks(api, kyiv, overdue="false")] == ["airport_reception"]


def test_pages_walk_every_task_once_in_order(app: App, api: TestClient, booked: str) -> None:
    second = advance_to(app, "travel_booked", after_each=lambda case_id: run_task_effects(app, case_id))
    headers = staff(app, "tallinn")
    both = ["open", "done"]
    expected = [t["id"] for t in tasks(api, headers, limit=200, status=both)]
    assert len(expected) == 4
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        page = api.get(
            "/tasks",
            params={"limit": 1, "status": both, **({"cursor": cursor} if cursor else {})},
            headers=headers,
        ).json()
        seen += [t["id"] for t in page["items"]]
        if (cursor := page["next_cursor"]) is None:
            break
    assert seen == expected
    assert [t["case_id"] for t in tasks(api, headers, case_id=second, status=both)] == [second, second]
    assert [t["kind"] for t in tasks(api, headers, kind="pre_arrival_notice")] == ["pre_arrival_notice"] * 2


def test_a_case_the_office_no_longer_sees_takes_its_tasks_out_of_its_list(
    app: App, api: TestClient, booked: str
) -> None:
    kyiv = staff(app, "kyiv")
    (reception,) = tasks(api, kyiv)
    with app.db.begin() as conn:  # as if the handover went to another destination office
        conn.execute(update(tb.cases).where(tb.cases.c.id == booked).values(destination_office="riga"))
    assert tasks(api, kyiv) == []
    refused = api.post(f"/tasks/{reception['id']}/complete", headers=kyiv)
    assert refused.status_code == 404
    with app.db.connect() as conn:
        assert conn.scalar(select(tb.tasks.c.status).where(tb.tasks.c.id == reception["id"])) == "open"


@pytest.mark.parametrize(
    "params",
    [
        {"status": "finished"},
        {"kind": "lottery"},
        {"cursor": "garbage"},
        {"cursor": LONE_SURROGATE_CURSOR},
        {"limit": 0},
        {"case_id": "x" * 37},
    ],
)
def test_bad_task_list_parameters_answer_422(
    app: App, api: TestClient, booked: str, params: dict[str, Any]
) -> None:
    response = api.get("/tasks", params=params, headers=staff(app, "tallinn"))
    assert response.status_code == 422
    assert response.json()["type"] == "/problems/invalid_payload"


def test_task_routes_answer_401_without_a_token(api: TestClient, booked: str) -> None:
    assert api.get("/tasks").status_code == 401
    assert api.post(f"/tasks/{uuid.uuid4()}/complete").status_code == 401
