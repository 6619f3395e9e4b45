"""The README's copy of the lifecycle diagram is the generated one, not a hand-kept restatement."""

from __future__ import annotations

from pathlib import Path

from workflow.domain.diagram import mermaid
from workflow.domain.lifecycle import LIFECYCLE

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_diagram_is_the_generated_diagram() -> None:
    text = README.read_text()
    block = text.split("```mermaid\n", 1)[1].split("```", 1)[0]
    assert block == mermaid(LIFECYCLE)


def test_readme_exit_code_table_matches_the_cli() -> None:
    from workflow.cli import EXIT_CODES

    table = README.read_text().split("| error | meaning | `avrr` exit code |", 1)[1].split("\n\n", 1)[0]
    rows = {
        line.split("|")[1].strip().strip("`"): int(line.split("|")[3].strip())
        for line in table.splitlines()
        if line.startswith("| `")
    }
    assert rows == {error.code: code for error, code in EXIT_CODES.items()}
