"""Transitions per second over HTTP (`avrr serve` on PostgreSQL) against in-process ``fire``.

Run from the repository root (as a module, like bench/transitions.py):

    .venv/bin/python -m bench.api             # 3 rounds of 10 s, then the paced run
    .venv/bin/python -m bench.api --quick     # smoke run, about 30 s

The server is the production command line, ``avrr serve --workers N`` (uvicorn, ``create_app``)
at WARNING and without its access log, on a private database made and dropped like
bench/transitions.py's. Clients are other processes, one keep-alive ``http.client`` connection
each, firing ``record_eligibility`` on their own ``inquiry`` cases (a reflexive transition: one
guarded UPDATE, one history row, one outbox row) with the ``If-Match`` version from the last
answer's ETag, and a bearer API token of a Tallinn caseworker.

1. Maximum rate: the clients fire back to back. Each round also runs in-process
   ``TransitionService.fire`` on as many processes (bench/transitions.py's ``fire`` step, on cases
   of their own); the ratio HTTP / in-process is the cost of the HTTP layer (target >= 0.4).
2. Paced: the same clients at half the measured HTTP rate, each request on a fixed schedule;
   its latency counts from its scheduled time (a late start is latency too), so p50/p95/p99
   include queueing (target p99 < 100 ms).

Clients, server and database share the machine: on a small one the clients' CPU (printed) is
taken from the server, and the figures move with whatever else runs.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import queue
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

if not __package__:  # bench/ first on sys.path would shadow the transitions library
    sys.exit("run from the repository root as a module: .venv/bin/python -m bench.api")

from bench.transitions import ADMIN_URL, PAYLOAD, TRIGGER, create_cases, postgres_database, quiet, settings
from bench.transitions import run as run_in_process
from workflow.adapters.clock import SystemClock
from workflow.adapters.tokens import SqlTokens
from workflow.bootstrap import bootstrap
from workflow.demo import TLL_CASEWORKER
from workflow.domain.actors import Role

ROOT = Path(__file__).resolve().parents[1]
BODY = json.dumps(PAYLOAD).encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server(url: str, port: int, workers: int) -> Iterator[subprocess.Popen[bytes]]:
    """`avrr serve` on the bench database until the block ends; SIGTERM, then SIGKILL if it hangs."""
    env = os.environ | {
        "AVRR_DATABASE_URL": url,
        "AVRR_ENVIRONMENT": "test",
        "AVRR_SECRET_KEY": "x" * 40,
        "AVRR_LOG_LEVEL": "WARNING",
        "AVRR_LOG_JSON": "true",
    }
    env.pop("AVRR_BROKER_URL", None)  # the rate limiter counts in-process: no Redis in the path
    argv = [sys.executable, "-m", "workflow", "serve", "--port", str(port), "--workers", str(workers)]
    proc = subprocess.Popen([*argv, "--no-access-log"], cwd=ROOT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not _live(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"avrr serve did not start (exit {proc.poll()})")
            time.sleep(0.2)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: the server and its workers
                proc.wait()


def _live(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/health/live")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


class Client:
    """One keep-alive connection firing the trigger round-robin over its cases."""

    def __init__(self, port: int, token: str, case_ids: list[str]) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.auth = f"Bearer {token}"
        self.ids, self.next = case_ids, 0
        self.versions = {case_id: self._version(case_id) for case_id in case_ids}

    def _version(self, case_id: str) -> int:
        self.conn.request("GET", f"/cases/{case_id}", headers={"Authorization": self.auth})
        response = self.conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"GET /cases/{case_id}: {response.status} {body[:300]!r}")
        return int(response.headers["ETag"].strip('"'))

    def fire(self) -> None:
        case_id = self.ids[self.next]
        self.next = (self.next + 1) % len(self.ids)
        headers = {
            "Authorization": self.auth,
            "Content-Type": "application/json",
            "If-Match": f'"{self.versions[case_id]}"',
        }
        self.conn.request("POST", f"/cases/{case_id}/transitions/{TRIGGER}", BODY, headers)
        response = self.conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"{TRIGGER} on {case_id}: {response.status} {body[:300]!r}")
        self.versions[case_id] = int(response.headers["ETag"].strip('"'))


def client(
    port: int,
    token: str,
    ids: list[str],
    rate: float | None,
    warmup: float,
    seconds: float,
    barrier: Any,
    out: Any,
) -> None:
    """Fires back to back (rate None) or on a fixed schedule of ``rate`` per second; puts
    (count, latencies in seconds, CPU seconds of this process) for the measured part."""
    try:
        c = Client(port, token, ids)
        barrier.wait()
    except BaseException:
        barrier.abort()
        raise
    start = time.perf_counter()
    measured_from, end = start + warmup, start + warmup + seconds
    latencies: list[float] = []
    cpu = 0.0
    n = 0
    while True:
        # Paced: request n is due at start + n / rate, and its latency counts from then.
        due = start + n / rate if rate else time.perf_counter()
        if due >= end:
            break
        if (wait := due - time.perf_counter()) > 0:
            time.sleep(wait)
        if not cpu and due >= measured_from:
            cpu = time.process_time()
        c.fire()
        if due >= measured_from:
            latencies.append(time.perf_counter() - due)
        n += 1
    out.put((len(latencies), latencies, time.process_time() - cpu))


def run_http(
    port: int, token: str, slices: list[list[str]], rate: float | None, warmup: float, seconds: float
) -> tuple[float, list[float], float]:
    """Requests per second over all clients, their sorted latencies, and the cores they used."""
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(len(slices), timeout=120), ctx.Queue()
    per_client = rate / len(slices) if rate else None
    procs = [
        ctx.Process(target=client, args=(port, token, ids, per_client, warmup, seconds, barrier, out))
        for ids in slices
    ]
    for p in procs:
        p.start()
    results: list[tuple[int, list[float], float]] = []
    try:
        while len(results) < len(procs):
            try:
                results.append(out.get(timeout=1))
            except queue.Empty:
                if any(p.exitcode for p in procs):
                    raise RuntimeError("an HTTP client died (traceback above)") from None
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    latencies = sorted(x for _, lat, _ in results for x in lat)
    return sum(n for n, _, _ in results) / seconds, latencies, sum(cpu for *_, cpu in results) / seconds


def pct(ordered: list[float], q: float) -> float:
    """The q-quantile of sorted latencies, in milliseconds (nearest rank)."""
    if not ordered:
        return float("nan")
    return 1000 * ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def make_token(url: str) -> str:
    app = bootstrap(settings(url))
    actor = TLL_CASEWORKER
    token, _ = SqlTokens(app.db).create(
        "bench", actor.id, actor.office, [Role.CASEWORKER], timedelta(days=1), SystemClock().now()
    )
    app.db.dispose()
    return token


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each run")
    parser.add_argument("--clients", type=int, default=4, help="client processes, one connection each")
    parser.add_argument("--api-workers", type=int, default=2, help="avrr serve --workers")
    parser.add_argument("--cases", type=int, default=100, help="pre-created cases per client")
    parser.add_argument("--rounds", type=int, default=3, help="HTTP/in-process pairs; the median is shown")
    parser.add_argument("--quick", action="store_true", help="smoke run: short runs, one round")
    parser.add_argument("--postgres-url", default=ADMIN_URL, help="admin URL; a private database is made")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.warmup, args.rounds, args.cases = 3.0, 1.0, 1, min(args.cases, 20)
    quiet()
    # Ctrl-C or SIGTERM (even when started in the background) unwinds: the server is stopped,
    # the clients are joined and the database is dropped.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    with postgres_database(args.postgres_url) as url:
        # Cases of their own for each side, so neither side's versions move under the other.
        ids = create_cases(url, 2 * args.cases * args.clients)
        http_ids, fire_ids = ids[: len(ids) // 2], ids[len(ids) // 2 :]
        http_slices = [http_ids[i :: args.clients] for i in range(args.clients)]
        fire_slices = [fire_ids[i :: args.clients] for i in range(args.clients)]
        token, port = make_token(url), free_port()
        print(
            f"{len(ids)} inquiry cases, trigger {TRIGGER}, {args.clients} clients, avrr serve --workers "
            f"{args.api_workers}, runs of {args.seconds:g} s after {args.warmup:g} s warm-up, "
            f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs",
            flush=True,
        )
        with server(url, port, args.api_workers):
            runs: dict[str, list[float]] = {"http": [], "fire": []}
            p99s: list[float] = []
            client_cpu: list[float] = []
            for _ in range(args.rounds):
                rate, latencies, cpu = run_http(port, token, http_slices, None, args.warmup, args.seconds)
                runs["http"].append(rate)
                p99s.append(pct(latencies, 0.99))
                client_cpu.append(cpu)
                runs["fire"].append(run_in_process("fire", url, fire_slices, args.warmup, args.seconds))
            h, f = statistics.median(runs["http"]), statistics.median(runs["fire"])
            print(
                f"max rate  http={h:,.0f}/s  in-process fire={f:,.0f}/s ({args.clients} processes)  "
                f"ratio={h / f:.2f} (target >= 0.40)  http p99={statistics.median(p99s):.1f} ms  "
                f"clients' CPU={statistics.median(client_cpu):.2f} cores  "
                f"runs: http={[round(x) for x in runs['http']]} fire={[round(x) for x in runs['fire']]}",
                flush=True,
            )
            target = h / 2
            rate, latencies, cpu = run_http(port, token, http_slices, target, args.warmup, args.seconds)
            print(
                f"paced     at half the http rate, {target:,.0f}/s asked, {rate:,.0f}/s done  "
                f"p50={pct(latencies, 0.50):.1f} ms  p95={pct(latencies, 0.95):.1f} ms  "
                f"p99={pct(latencies, 0.99):.1f} ms (target < 100 ms)  max={pct(latencies, 1.0):.1f} ms  "
                f"clients' CPU={cpu:.2f} cores",
                flush=True,
            )


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted: the server is stopped and the bench database dropped")
