#!/usr/bin/env python3
"""Two commands on a fresh machine with only Python 3.11+: `python3 dev.py run` and `python3 dev.py test`.

Creates ./.venv, installs the project from pyproject.toml (again only when it changes), then
runs the engine on its embedded default or runs the checks and the test suite.
`python3 dev.py run --serve` keeps the API, worker, relay and beat running after the story, until Ctrl-C.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".installed-from"


def _sh(*args: str | Path, check: bool = True) -> int:
    print("+", " ".join(str(a) for a in args), flush=True)
    return subprocess.run([str(a) for a in args], cwd=ROOT, check=check).returncode  # noqa: S603


def setup() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py may be started by an older python3
        sys.exit(f"Python 3.11 or newer is needed, this is {sys.version.split()[0]}")
    if not (BIN / "python").exists():
        venv.EnvBuilder(with_pip=True).create(VENV)
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if not STAMP.exists() or STAMP.read_text() != digest:
        _sh(BIN / "python", "-m", "pip", "install", "--quiet", "--upgrade", "pip")
        _sh(BIN / "python", "-m", "pip", "install", "--quiet", "-e", ".[dev]")
        STAMP.write_text(digest)


# The processes beside the engine on the embedded default: two worker processes and one API
# process at most, as SQLite has one writer at a time; the filesystem broker is shared through
# files under ./var. Each has `avrr NAME --check`.
PROCESSES = {
    "api": ["serve", "--host", "127.0.0.1"],
    "worker": ["worker", "--concurrency", "2"],
    "relay": ["relay"],
    "beat": ["beat"],
}
SMTP_SINK = ("127.0.0.1", 1025)  # config/settings.py's default SMTP host and port
API_PORT = 8000  # `avrr serve`'s default; AVRR_API_PORT to change it
OPS_ACTOR = ("ops-demo", "tallinn", "ops")  # the dashboard's demo login
DEMO_ACTOR = ("tll-caseworker", "tallinn", "caseworker")  # workflow/demo.py: TLL_CASEWORKER


def _start(name: str, argv: list[str | Path], logs: Path) -> subprocess.Popen[bytes]:
    # A session of its own: Ctrl-C reaches dev.py only, which then stops each process itself.
    with (logs / f"{name}.log").open("ab") as log:
        return subprocess.Popen(  # noqa: S603
            [str(a) for a in argv], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def _stop(processes: dict[str, subprocess.Popen[bytes]]) -> None:
    for name, proc in processes.items():
        if proc.poll() is None:  # aiosmtpd stops cleanly on SIGINT only
            proc.send_signal(signal.SIGINT if name == "smtp" else signal.SIGTERM)
    for name, proc in processes.items():
        try:
            code = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        print(f"stopped {name} (exit {code})", flush=True)


def _check(name: str) -> bool:
    check = subprocess.run(  # noqa: S603
        [str(BIN / "avrr"), PROCESSES[name][0], "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if check.returncode == 0:
        print("  " + check.stdout.strip(), flush=True)
    return check.returncode == 0


def _free(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def _api_port() -> int:
    """AVRR_API_PORT, else 8000, else (taken) any free port; `avrr serve` and its check read it."""
    if "AVRR_API_PORT" in os.environ:
        return int(os.environ["AVRR_API_PORT"])
    port = API_PORT
    if not _free(port):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        print(f"port {API_PORT} is taken: the API listens on {port}", flush=True)
    os.environ["AVRR_API_PORT"] = str(port)
    return port


def _token(who: tuple[str, str, str] = DEMO_ACTOR) -> str:
    """An API token for a demo actor (the caseworker, ops), valid one day (`avrr token create`)."""
    actor, office, role = who
    argv = ["token", "create", "--actor", actor, "--office", office, "--role", role, "--days", "1"]
    made = subprocess.run(  # noqa: S603
        [str(BIN / "avrr"), *argv, "--name", "dev.py run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    return made.stdout.strip() if made.returncode == 0 else ""


def _demo() -> tuple[int, str | None]:
    """`avrr demo`, its output passed through; returns its exit code and the story's case id."""
    print("+", BIN / "avrr", "demo", flush=True)
    proc = subprocess.Popen(  # noqa: S603
        [str(BIN / "avrr"), "demo"], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    case_id = None
    assert proc.stdout is not None
    for line in proc.stdout:
        print(line, end="", flush=True)
        if found := re.match(r"case ([0-9a-f-]{36}):", line):
            case_id = found.group(1)
    return proc.wait(), case_id


def _where(port: int, token: str, case_id: str | None, serve: bool, ops_token: str = "") -> None:
    url = f"http://127.0.0.1:{port}"
    actor, office, role = DEMO_ACTOR
    case = case_id or "CASE_ID"
    print(f"\nHTTP API: {url} (OpenAPI docs: {url}/docs, log: var/log/api.log)")
    if token:
        print(f"API token of the demo {role} {actor} ({office}), valid one day:\n  {token}")
    else:
        print(f"no API token made: avrr token create --actor {actor} --office {office} --role {role}")
    print("for example, the story's case and its history:")
    print(f"  export AVRR_TOKEN={token or '...'}")
    print(f'  curl -H "Authorization: Bearer $AVRR_TOKEN" {url}/cases/{case}')
    print(f'  curl -H "Authorization: Bearer $AVRR_TOKEN" {url}/cases/{case}/history')
    print(f"ops dashboard: {url}/ops/ (log in with the ops token below); metrics: {url}/metrics")
    print(f"  {ops_token or 'no ops token made: avrr token create --actor ... --office ... --role ops'}")
    print("ops in a terminal: .venv/bin/avrr ops status (and ops stuck, ops dead-letters, ops replay)")
    if not serve:
        print("(stopping now: python3 dev.py run --serve keeps it running)", flush=True)


def _smtp_sink_needed() -> bool:
    """Only for the default SMTP host, and only when nothing listens there already."""
    if "AVRR_SMTP_HOST" in os.environ or "AVRR_SMTP_PORT" in os.environ:
        return False
    with socket.socket() as probe:
        return probe.connect_ex(SMTP_SINK) != 0


def run(extra: list[str]) -> int:
    """The engine on its embedded default (SQLite under ./var, the broker in files, no server):
    the API, worker, relay and beat beside it, the seed family's story, what the workers did,
    and where to reach the API (its URL, docs, a demo caseworker's token, example curls)."""
    from datetime import UTC, datetime

    serve = "--serve" in extra
    # Ctrl-C, or a SIGTERM to dev.py, stops the processes below before dev.py exits.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    _sh(BIN / "avrr", "db", "upgrade")
    logs = ROOT / "var" / "log"
    logs.mkdir(parents=True, exist_ok=True)
    processes: dict[str, subprocess.Popen[bytes]] = {}
    mail = ROOT / "var" / "mail"
    api_port = _api_port()
    # One API process on SQLite (one writer); AVRR_API_WORKERS elsewhere.
    sqlite = os.environ.get("AVRR_DATABASE_URL", "sqlite").startswith("sqlite")
    try:
        for name, argv in PROCESSES.items():
            extra_args = ["--workers", "1"] if name == "api" and sqlite else []
            processes[name] = _start(name, [BIN / "avrr", *argv, *extra_args], logs)
        if _smtp_sink_needed():  # a local SMTP server that keeps each e-mail in var/mail (Maildir)
            host, port = SMTP_SINK
            sink = [BIN / "python", "-m", "aiosmtpd", "-n", "-u", "-l", f"{host}:{port}"]
            processes["smtp"] = _start("smtp", [*sink, "-c", "aiosmtpd.handlers.Mailbox", mail], logs)
        print(f"started {', '.join(processes)} (logs in {logs.relative_to(ROOT)}/)", flush=True)
        deadline = time.monotonic() + 30
        for name in ("worker", "api"):
            while not _check(name):
                dead = [n for n, proc in processes.items() if proc.poll() is not None]
                if dead or time.monotonic() > deadline:
                    print(f"the {name} did not start ({', '.join(dead) or 'no answer'}): see var/log/")
                    return 1
                time.sleep(0.5)
        started = datetime.now(UTC).replace(microsecond=0)
        since = started.strftime("%Y-%m-%dT%H:%M:%S")
        code, case_id = _demo()
        if code:
            return code
        print("\nwaiting for the workers to run the story's events (60 s at most)", flush=True)
        code = _sh(BIN / "avrr", "wait-idle", "--since", since, "--timeout", "60", check=False)
        if "smtp" in processes and (mail / "new").is_dir():
            caught = [m for m in (mail / "new").iterdir() if m.stat().st_mtime >= started.timestamp()]
            print(f"e-mails caught by the local SMTP sink (Maildir var/mail): {len(caught)}")
        print("health checks:", flush=True)
        healthy = all([_check(name) for name in PROCESSES])
        _where(api_port, _token(), case_id, serve, _token(OPS_ACTOR))
        if serve:
            print("running until Ctrl-C", flush=True)
            while not (dead := [name for name, proc in processes.items() if proc.poll() is not None]):
                time.sleep(1)
            print(f"{', '.join(dead)} stopped on its own: see var/log/", flush=True)
            return 1
        return code or (0 if healthy else 1)
    except KeyboardInterrupt:
        return 0 if serve else 130
    finally:
        _stop(processes)


def test(extra: list[str]) -> int:
    """Lint, types, import contracts, then pytest on SQLite and (when reachable) PostgreSQL."""
    for check in (
        [BIN / "ruff", "check", "."],
        [BIN / "ruff", "format", "--check", "."],
        [BIN / "mypy"],
        [BIN / "lint-imports"],
    ):
        if _sh(*check, check=False):
            return 1
    code = _sh(BIN / "pytest", "-n", "2", *extra, check=False)
    if code == 5:  # pytest: no tests collected; never a green run
        print("pytest collected no tests", file=sys.stderr)
        return 1
    return code


def main() -> int:
    command, extra = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else ("", [])
    if command not in ("run", "test", "setup"):
        print(__doc__)
        return 2
    setup()
    if command == "setup":
        return 0
    return run(extra) if command == "run" else test(extra)


if __name__ == "__main__":
    sys.exit(main())
