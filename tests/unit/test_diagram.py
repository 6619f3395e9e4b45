"""The diagram and the table are renderings of the lifecycle: one line per edge, one row per transition."""

from __future__ import annotations

import re

import pytest

from workflow.domain.diagram import mermaid, table, table_rows
from workflow.domain.lifecycle import LIFECYCLE, SAME

EDGE_LINE = re.compile(r"^    (\S+) --> (\S+): (\w+)$")
FINAL_LINE = re.compile(r"^    (\w+) --> \[\*\]$")


def _edge_lines(text: str) -> list[tuple[str, str, str]]:
    return [m.groups() for line in text.splitlines() if (m := EDGE_LINE.match(line))]


def test_the_mermaid_diagram_has_exactly_one_line_per_edge():
    expected = [
        ("[*]" if source == LIFECYCLE.initial else source, target, t.trigger)
        for source, t, target in LIFECYCLE.edges()
    ]
    text = mermaid(LIFECYCLE)

    assert text.startswith("stateDiagram-v2\n")
    assert _edge_lines(text) == expected
    assert len(set(expected)) == len(expected)


def test_the_mermaid_diagram_marks_final_states_and_only_those():
    finals = [m.group(1) for line in mermaid(LIFECYCLE).splitlines() if (m := FINAL_LINE.match(line))]
    assert finals == [s.name for s in LIFECYCLE.states if s.final]
    assert finals


@pytest.mark.parametrize("state", [s.name for s in LIFECYCLE.states])
def test_the_mermaid_diagram_highlights_the_current_state(state):
    text = mermaid(LIFECYCLE, current=state)
    assert text.splitlines()[-1] == f"    class {state} current"
    assert _edge_lines(text) == _edge_lines(mermaid(LIFECYCLE))


def test_an_unknown_current_state_highlights_nothing():
    assert "classDef" not in mermaid(LIFECYCLE, current="nowhere")
    assert "classDef" not in mermaid(LIFECYCLE)


def test_the_table_has_a_row_per_transition_in_order():
    rows = table_rows(LIFECYCLE)
    assert [r["trigger"] for r in rows] == [t.trigger for t in LIFECYCLE.transitions]


@pytest.mark.parametrize("t", LIFECYCLE.transitions, ids=lambda t: t.trigger)
def test_each_table_row_renders_its_transition(t):
    (row,) = [r for r in table_rows(LIFECYCLE) if r["trigger"] == t.trigger]
    assert row["from"].split(", ") == list(t.sources)
    assert row["to"] == ("(same)" if t.dest == SAME else t.dest)
    assert set(row["roles"].split(", ")) == {r.value for r in t.roles}
    assert row["office"].split("/") == list(t.sides)
    assert row["events"].split(", ") == list(t.events)
    assert row["guards"] == (", ".join(t.guard_names) or "-")


def test_the_text_table_has_a_header_a_rule_and_a_line_per_transition():
    lines = table(LIFECYCLE).splitlines()
    assert lines[0].split() == ["TRIGGER", "FROM", "TO", "ROLES", "OFFICE", "GUARDS", "EVENTS"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    body = lines[2:]
    # Long cells wrap onto continuation lines, whose trigger column is blank.
    assert [line.split()[0] for line in body if not line.startswith(" ")] == [
        t.trigger for t in LIFECYCLE.transitions
    ]
    assert max(len(line) for line in body) <= len(lines[1])


@pytest.mark.parametrize("t", LIFECYCLE.transitions, ids=lambda t: t.trigger)
def test_the_text_table_shows_every_guard_and_event_of_a_transition(t):
    words = set(table(LIFECYCLE).replace(",", " ").split())
    assert set(t.guard_names) <= words
    assert set(t.events) <= words
    assert set(t.sources) <= words
