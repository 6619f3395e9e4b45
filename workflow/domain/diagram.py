"""Renders a Lifecycle as a Mermaid state diagram and as a readable table."""

from __future__ import annotations

import textwrap

from workflow.domain.lifecycle import Lifecycle

_START = "[*]"


def mermaid(lifecycle: Lifecycle, current: str | None = None) -> str:
    lines = ["stateDiagram-v2", f"    %% avrr lifecycle {lifecycle.version}"]
    for source, t, target in lifecycle.edges():
        src = _START if source == lifecycle.initial else source
        lines.append(f"    {src} --> {target}: {t.trigger}")
    lines += [f"    {s.name} --> {_START}" for s in lifecycle.states if s.final]
    if current and current in lifecycle.by_state:
        lines += ["    classDef current fill:#f96,stroke:#333", f"    class {current} current"]
    return "\n".join(lines) + "\n"


def table_rows(lifecycle: Lifecycle) -> list[dict[str, str]]:
    return [
        {
            "trigger": t.trigger,
            "from": ", ".join(t.sources),
            "to": "(same)" if t.dest == "=" else t.dest,
            "roles": ", ".join(sorted(r.value for r in t.roles)),
            "office": "/".join(t.sides),
            "guards": ", ".join(t.guard_names) or "-",
            "events": ", ".join(t.events),
        }
        for t in lifecycle.transitions
    ]


_WRAP = {"from": 28, "roles": 20, "guards": 38, "events": 24}


def table(lifecycle: Lifecycle) -> str:
    """Fixed-width columns; long lists wrap inside their cell so the table fits a terminal."""
    rows = [
        {
            h: textwrap.wrap(v, _WRAP[h], break_on_hyphens=False, break_long_words=False) or [""]
            if h in _WRAP
            else [v]
            for h, v in row.items()
        }
        for row in table_rows(lifecycle)
    ]
    headers = list(rows[0])
    widths = {h: max(len(h), *(len(line) for r in rows for line in r[h])) for h in headers}
    out = ["  ".join(h.upper().ljust(widths[h]) for h in headers).rstrip()]
    out.append("  ".join("-" * widths[h] for h in headers))
    for row in rows:
        for i in range(max(len(cell) for cell in row.values())):
            cells = (row[h][i] if i < len(row[h]) else "" for h in headers)
            out.append("  ".join(c.ljust(widths[h]) for c, h in zip(cells, headers, strict=True)).rstrip())
    return "\n".join(out) + "\n"
