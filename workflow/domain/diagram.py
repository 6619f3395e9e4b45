"""Renders a Lifecycle as a Mermaid state diagram and as a readable table."""

from __future__ import annotations

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


def table(lifecycle: Lifecycle) -> str:
    rows = table_rows(lifecycle)
    headers = list(rows[0])
    widths = {h: max(len(h), *(len(r[h]) for r in rows)) for h in headers}
    out = ["  ".join(h.upper().ljust(widths[h]) for h in headers)]
    out.append("  ".join("-" * widths[h] for h in headers))
    out += ["  ".join(r[h].ljust(widths[h]) for h in headers) for r in rows]
    return "\n".join(out) + "\n"
