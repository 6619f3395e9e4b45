"""What `avrr ops status` says: the problems that need a person, and the one screen as text."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from workflow.adapters.ops_views import OVERDUE_GRACE, OpsStatus, StateCount
from workflow.domain.lifecycle import LIFECYCLE

if TYPE_CHECKING:  # Celery is imported only by the commands that talk to the broker
    from workflow.adapters.worker_watch import WorkerInfo

_UNITS = ((86400, "d"), (3600, "h"), (60, "m"), (1, "s"))


def span(seconds: float) -> str:
    """A duration for people: its largest unit and the next one, "3d 4h", "14d", "12m 5s", "40s"."""
    whole = max(0, int(seconds))
    for n, (size, unit) in enumerate(_UNITS):
        if whole >= size or size == 1:
            text = f"{whole // size}{unit}"
            if n + 1 < len(_UNITS) and (rest := whole % size // _UNITS[n + 1][0]):
                text += f" {rest}{_UNITS[n + 1][1]}"
            return text
    raise AssertionError("unreachable: the last unit is one second")


@dataclass(frozen=True, slots=True)
class Workers:
    """The workers online, as far as the broker let us know: ``online`` is None when they were
    not asked (``note`` says so) or the broker could not be reached (``note`` says why)."""

    asked: bool
    online: list[WorkerInfo] | None
    note: str | None = None


def problems(found: OpsStatus, workers: Workers, max_outbox_age_s: float) -> list[str]:
    """What needs a person, each in a line that says where to look next."""
    found_problems = []
    if workers.asked and workers.online is None:
        found_problems.append(workers.note or "broker unreachable")
    elif workers.asked and not workers.online:
        found_problems.append("no worker online")
    if found.outbox_oldest_age_s is not None and found.outbox_oldest_age_s > max_outbox_age_s:
        found_problems.append(
            f"outbox: oldest unsent event {span(found.outbox_oldest_age_s)} old "
            f"(limit {span(max_outbox_age_s)}): is the relay running?"
        )
    if found.dead_letters_open:
        found_problems.append(f"{found.dead_letters_open} dead letter(s) open: avrr ops dead-letters")
    if found.timers_overdue:
        found_problems.append(f"{found.timers_overdue} timer(s) overdue: is beat running?")
    return found_problems


def screen(found: OpsStatus, workers: Workers, found_problems: list[str]) -> str:
    verdict = f"{len(found_problems)} problem(s) need a person" if found_problems else "healthy"
    lines = [f"avrr at {found.at:%Y-%m-%d %H:%M:%S %Z}: {verdict}"]
    lines += [f"  ! {problem}" for problem in found_problems]
    online = workers.online
    rows = [("workers", workers.note if online is None else f"{len(online)} online")]
    rows += [
        (
            "",
            f"{w.name}  {w.pool} x{w.concurrency}  queues {','.join(w.queues) or '-'}  "
            f"{len(w.active)} running  {sum(w.processed.values())} run since start",
        )
        for w in online or []
    ]
    oldest = found.outbox_oldest_age_s
    rows += [
        ("outbox", f"{found.outbox_backlog} unsent" + ("" if oldest is None else f", oldest {span(oldest)}")),
        ("jobs", f"{found.jobs_running} running"),
        ("dead letters", f"{found.dead_letters_open} open"),
        (
            "timers",
            f"{found.timers_due} due, {found.timers_overdue} overdue "
            f"(more than {span(OVERDUE_GRACE.total_seconds())} past due)",
        ),
        ("stuck cases", f"{found.stuck_cases}" + (": avrr ops stuck" if found.stuck_cases else "")),
    ]
    lines += ["", *(f"{label:<13} {text}" for label, text in rows), "", table(found.cases_by_state)]
    return "\n".join(lines)


def table(counts: list[StateCount]) -> str:
    """Cases by state (rows, in lifecycle order) and owner office (columns), with totals."""
    if not counts:
        return "cases: none"
    offices = sorted({n.office for n in counts})
    order = {s.name: i for i, s in enumerate(LIFECYCLE.states)}
    states = sorted({n.state for n in counts}, key=lambda s: (order.get(s, len(order)), s))
    cell = {(n.state, n.office): n.count for n in counts}
    width = max(len("cases by state"), *(len(s) for s in states))
    cols = [max(len(o), 5) for o in offices]

    def line(label: str, values: list[int]) -> str:
        cells = [f"{v or '-':>{w}}" for v, w in zip(values, cols, strict=True)]
        return f"{label:<{width}}  {'  '.join(cells)}  {sum(values):>5}"

    heads = [f"{o:>{w}}" for o, w in zip(offices, cols, strict=True)]
    lines = [f"{'cases by state':<{width}}  {'  '.join(heads)}  {'total':>5}"]
    lines += [line(s, [cell.get((s, o), 0) for o in offices]) for s in states]
    lines.append(line("total", [sum(cell.get((s, o), 0) for s in states) for o in offices]))
    return "\n".join(lines)
