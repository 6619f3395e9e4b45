"""Fires a million in-memory transitions through the shared Machine and prints memory as it goes.

The Machine is built once; each fire runs it on a throw-away object, so memory must stay flat.
Prints fires/s and resident memory at checkpoints, and the growth from the first to the last.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from datetime import UTC, date, datetime
from pathlib import Path

# bench/transitions.py would shadow the `transitions` library when a script here runs.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from workflow.domain.actors import SYSTEM_ACTOR
from workflow.domain.case import Case
from workflow.domain.lifecycle import LIFECYCLE
from workflow.domain.machine import machine_for
from workflow.domain.payloads import NoPayload
from workflow.domain.programme import FireContext, Programme


def rss_kib() -> int:
    with open(f"/proc/{os.getpid()}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fires", type=int, default=1_000_000)
    args = parser.parse_args()

    machine = machine_for(LIFECYCLE.version)
    case = Case(
        id="bench",
        lifecycle_version=LIFECYCLE.version,
        origin_office="tallinn",
        destination_office="kyiv",
        owner_office="kyiv",
        _state="monitoring",
        version=1,
        last_visit_on=date(2026, 1, 1),
    )
    ctx = FireContext(SYSTEM_ACTOR, datetime(2026, 11, 28, tzinfo=UTC), Programme())
    payload = NoPayload()
    checkpoints = {args.fires // 10, args.fires // 2, args.fires}
    gc.collect()
    first = None
    started = time.perf_counter()
    for n in range(1, args.fires + 1):
        machine.fire(case, "escalate_monitoring", payload, ctx)
        case.changes.clear()  # the repository empties it on every save
        if n in checkpoints:
            gc.collect()
            rss, objects = rss_kib(), len(gc.get_objects())
            first = first or (rss, objects)
            rate = n / (time.perf_counter() - started)
            print(f"fires={n:>9,}  rate={rate:>8,.0f}/s  rss={rss / 1024:7.1f} MiB  gc_objects={objects:,}")
    assert first is not None
    print(
        f"growth from {args.fires // 10:,} to {args.fires:,} fires: rss {rss - first[0]:+,} KiB, "
        f"gc objects {objects - first[1]:+,}; machine models attached: {len(machine._machine.models)}"
    )


if __name__ == "__main__":
    main()
