"""bench/scale.py keeps working: its quick mode loads two sizes, prints a line with figures for
every query it promises at both sizes, and drops its database, also when it is stopped."""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import POSTGRES_ADMIN_URL

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
BENCH = [sys.executable, "-m", "bench.scale", "--quick", "--postgres-url", POSTGRES_ADMIN_URL]

# What the bench promises to measure (the issue): the ops status and each of its parts, every
# OpsViews list, and the case list's filters as an office's caller and as an office-less one.
QUERIES = (
    "ops overview (dashboard)",
    "ops status",
    "ops status > outbox lag",
    "ops status > cases by state and office",
    "ops status > jobs running",
    "ops status > dead letters open",
    "ops status > timers due",
    "ops status > timers overdue",
    "ops status > stuck count",
    "ops outbox_lag",
    "ops cases_by_state",
    "ops stuck_cases (200)",
    "ops overdue_timers (200)",
    "ops recent_jobs (50)",
    "ops dead_letters (200)",
    "ops timeline (closed case)",
    "cases tallinn",
    "cases tallinn page 2",
    "cases tallinn deep page",
    "cases tallinn state=travel_booked",
    "cases tallinn 3 reintegration states",
    "cases tallinn office=kyiv",
    "cases tallinn office=riga (none)",
    "cases tallinn overdue",
    "cases tallinn not overdue",
    "cases tallinn updated_since=7d",
    "cases system",
    "cases system state=monitoring",
    "cases system office=tbilisi",
    "cases system overdue",
)
CLI = "avrr ops status (process)"  # once the command exists
NUMBER = r"\s+(\d+\.\d+)"
# name, then p50 p95 p99 at each size, the growth of p95 and the verdict
ROW = re.compile(
    rf"^(?P<name>.+?){NUMBER * 3}{NUMBER * 3}\s+x\s*(?P<ratio>\d+\.\d+)\s+(?P<verdict>PASS|MISS)$"
)


def databases(name: str) -> set[str]:
    engine = create_engine(POSTGRES_ADMIN_URL)
    with engine.connect() as conn:
        found = set(conn.scalars(text("SELECT datname FROM pg_database WHERE datname = :n"), {"n": name}))
    engine.dispose()
    return found


def database_of(output: str) -> str:
    found = re.search(r"^database (avrr_scale_[0-9a-f]{8}), dropped at the end$", output, re.M)
    assert found, output[:2000]
    return found.group(1)


def test_quick_run_prints_every_query_at_both_sizes_and_drops_its_database(postgres_url: str) -> None:
    done = subprocess.run(BENCH, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert re.search(r"^2,000 cases, loaded in \d+\.\d s: cases 2,000, case_history [\d,]+", out, re.M), out
    assert re.search(r"^20,000 cases, loaded in \d+\.\d s: cases 20,000, case_history [\d,]+", out, re.M), out
    assert re.search(r"^ms\s+2,000 cases: p50 .* 20,000 cases: p50 .* p95 ratio\s+p95 < 100 ms$", out, re.M)
    rows = {m["name"].strip(): m for m in map(ROW.match, out.splitlines()) if m}
    has_status = subprocess.run(
        [sys.executable, "-m", "workflow", "ops", "status", "--help"],
        cwd=ROOT,
        capture_output=True,
        check=False,
    )
    queries = (*QUERIES, CLI) if has_status.returncode == 0 else QUERIES
    assert set(queries) <= set(rows), sorted(set(queries) - set(rows))
    for name in queries:
        figures = [float(x) for x in rows[name].groups()[1:7]]
        assert all(math.isfinite(x) and x > 0 for x in figures), (name, figures)
        p50, p95, p99 = figures[3:]
        assert p50 <= p95 <= p99, (name, figures)
        assert rows[name]["verdict"] == ("PASS" if p95 < 100 else "MISS"), rows[name].string
    missed = re.search(r"^missed: (.*); load average", out, re.M)
    assert missed, out[-2000:]
    assert databases(database_of(out)) == set()


def test_sigterm_while_loading_drops_the_database(postgres_url: str) -> None:
    proc = subprocess.Popen(
        [*BENCH, "--sizes", "200000"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    lines = [proc.stdout.readline(), proc.stdout.readline()]
    name = database_of("".join(lines))
    deadline = time.monotonic() + 60
    while not databases(name) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert databases(name) == {name}
    time.sleep(2)  # well into the first round of loading
    os.kill(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, out + err
    assert "interrupted: the bench database is dropped" in err
    assert databases(name) == set()
