"""The seed family end to end (DOMAIN.md, acceptance story) through the engine and the `avrr` CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import select

from tests.support import REGISTRATION, register
from workflow.adapters import tables as tb
from workflow.bootstrap import App
from workflow.demo import HOUSEHOLD, KBP_FINANCE_LEAD, STEPS, TLL_APPROVER, run_story
from workflow.domain.lifecycle import LIFECYCLE

AVRR = [sys.executable, "-m", "workflow"]


def test_the_seed_family_goes_from_inquiry_to_closure(app: App) -> None:
    results = list(run_story(app.transitions, app.views.case))
    case_id = results[0].case_id

    case = app.views.case(case_id)
    assert (case["state"], case["outcome"], case["owner_office"]) == ("closed", "reintegrated", "kyiv")
    assert [r.trigger for r in results[1:]] == [s.trigger for s in STEPS]
    assert case["version"] == len(STEPS) + 1
    assert [(line["category"], line["allocated"], line["disbursed"]) for line in case["plan"]["lines"]] == [
        ("business", "2000.00 EUR", "1450.00 EUR"),
        ("business", "2000.00 EUR", "1800.00 EUR"),
        ("education", "700.00 EUR", "630.00 EUR"),
        ("education", "700.00 EUR", "600.00 EUR"),
    ]
    assert case["contributions"] == ["900.00 EUR"]
    with app.db.connect() as conn:
        d = tb.disbursements.c
        tranches = conn.execute(
            select(d.amount_minor, d.status, d.requested_by, d.disbursed_by, d.receipt_ref)
            .where(d.case_id == case_id)
            .order_by(d.position)
        ).all()
    # Five tranches, each requested by one person, approved by another finance officer, receipted.
    assert [(t.amount_minor, t.status, t.receipt_ref) for t in tranches] == [
        (145000, "receipted", "R-1001"),
        (180000, "receipted", "R-1002"),
        (39000, "receipted", "R-1003"),
        (24000, "receipted", "R-1004"),
        (60000, "receipted", "R-1005"),
    ]
    assert {t.disbursed_by for t in tranches} == {KBP_FINANCE_LEAD.id}
    assert all(t.requested_by not in (t.disbursed_by, TLL_APPROVER.id) for t in tranches)
    assert case["timers"] == []  # closure cancelled the monitoring deadline
    history = app.views.history(case_id)
    assert [h["to_state"] for h in history][-1] == "closed"
    grants = [h["payload"] for h in history if h["trigger"] == "approve_disbursement"]
    assert [(g["amount"], g["currency"]) for g in grants] == [
        ("1450.00", "EUR"),
        ("1800.00", "EUR"),
        ("390.00", "EUR"),
        ("240.00", "EUR"),
        ("600.00", "EUR"),
    ]
    with app.db.connect() as conn:
        events = list(
            conn.scalars(
                select(tb.outbox.c.event_type).where(tb.outbox.c.case_id == case_id).order_by(tb.outbox.c.id)
            )
        )
        assert conn.scalar(select(tb.disbursements.c.id).where(tb.disbursements.c.kind == "cash")) is None
    triggers = ["register_inquiry", *(step.trigger for step in STEPS)]
    assert events == [event for t in triggers for event in LIFECYCLE.by_trigger[t].events]


def _cli(*args: str, db: Path) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"AVRR_DATABASE_URL": f"sqlite:///{db}", "AVRR_ENVIRONMENT": "development"}
    return subprocess.run([*AVRR, *args], capture_output=True, text=True, env=env, timeout=120, check=False)


def test_avrr_demo_prints_every_step_and_the_closed_case(tmp_path: Path) -> None:
    run = _cli("demo", db=tmp_path / "demo.sqlite3")

    assert run.returncode == 0, run.stderr
    assert run.stdout.count(" -> ") == len(STEPS) + 1
    assert "closed (outcome: reintegrated), owned by kyiv, 4 household members" in run.stdout
    for member in HOUSEHOLD:
        assert member["full_name"] not in run.stdout + run.stderr


def test_avrr_case_commands_create_fire_show_and_refuse(tmp_path: Path) -> None:
    db = tmp_path / "cli.sqlite3"
    assert _cli("db", "upgrade", db=db).returncode == 0
    for office in (("tallinn", "Tallinn", "EE"), ("kyiv", "Kyiv", "UA")):
        assert _cli("office", "add", *office, db=db).returncode == 0
    who = ["--actor", "tll-cw", "--office", "tallinn"]

    created = _cli("case", "create", *who, "--payload", json.dumps(REGISTRATION), db=db)
    case_id = json.loads(created.stdout)["case_id"]
    refused = _cli("case", "fire", case_id, "submit_application", *who, "--role", "caseworker", db=db)
    unknown = _cli("case", "fire", "nope", "submit_application", *who, "--role", "caseworker", db=db)
    shown = json.loads(_cli("case", "show", case_id, db=db).stdout)
    history = _cli("case", "history", case_id, db=db)

    assert created.returncode == 0, created.stderr
    assert refused.returncode != 0 and "guard_failed" in refused.stderr and "consent" in refused.stderr
    assert unknown.returncode not in (0, refused.returncode) and "unknown_case" in unknown.stderr
    assert shown["state"] == "inquiry" and len(shown["members"]) == 4
    assert "register_inquiry" in history.stdout and "-> inquiry" in history.stdout


def test_avrr_lifecycle_prints_the_diagram_and_the_table(tmp_path: Path) -> None:
    diagram = _cli("lifecycle", "diagram", db=tmp_path / "x.sqlite3")
    table = _cli("lifecycle", "table", db=tmp_path / "x.sqlite3")

    assert diagram.stdout.startswith("stateDiagram-v2")
    assert diagram.stdout.count("-->") == len(list(LIFECYCLE.edges())) + sum(
        s.final for s in LIFECYCLE.states
    )
    assert all(t.trigger in table.stdout for t in LIFECYCLE.transitions)


def test_registering_twice_makes_two_cases(app: App) -> None:
    assert register(app).case_id != register(app).case_id
