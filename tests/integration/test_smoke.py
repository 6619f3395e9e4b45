"""The seed story runs on both databases (a first check of the fixtures)."""

from __future__ import annotations

from tests.support import advance_to
from workflow.bootstrap import App


def test_seed_story_reaches_monitoring(app: App) -> None:
    case_id = advance_to(app, "monitoring")
    assert app.views.case(case_id)["state"] == "monitoring"
