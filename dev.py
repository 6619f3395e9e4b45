#!/usr/bin/env python3
"""Two commands on a fresh machine with only Python 3.11+: `python3 dev.py run` and `python3 dev.py test`.

Creates ./.venv, installs the project from pyproject.toml (again only when it changes), then
runs the engine on its embedded default or runs the checks and the test suite.
`python3 dev.py run --serve` keeps the worker, relay and beat running after the story, until Ctrl-C.
"""

from __future__ import annotations

import hashlib
import os
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


# The processes beside the engine on the embedded default: two worker processes at most, as
# SQLite has one writer at a time; the filesystem broker is shared through files under ./var.
PROCESSES = {
    "worker": ["worker", "--concurrency", "2"],
    "relay": ["relay"],
    "beat": ["beat"],
}
SMTP_SINK = ("127.0.0.1", 1025)  # config/settings.py's default SMTP host and port


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
        [str(BIN / "avrr"), name, "--check"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if check.returncode == 0:
        print("  " + check.stdout.strip(), flush=True)
    return check.returncode == 0


def _smtp_sink_needed() -> bool:
    """Only for the default SMTP host, and only when nothing listens there already."""
    if "AVRR_SMTP_HOST" in os.environ or "AVRR_SMTP_PORT" in os.environ:
        return False
    with socket.socket() as probe:
        return probe.connect_ex(SMTP_SINK) != 0


def run(extra: list[str]) -> int:
    """The engine on its embedded default (SQLite under ./var, the broker in files, no server):
    worker, relay and beat beside it, the seed family's story, and what the workers did."""
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
    try:
        for name, argv in PROCESSES.items():
            processes[name] = _start(name, [BIN / "avrr", *argv], logs)
        if _smtp_sink_needed():  # a local SMTP server that keeps each e-mail in var/mail (Maildir)
            host, port = SMTP_SINK
            sink = [BIN / "python", "-m", "aiosmtpd", "-n", "-u", "-l", f"{host}:{port}"]
            processes["smtp"] = _start("smtp", [*sink, "-c", "aiosmtpd.handlers.Mailbox", mail], logs)
        print(f"started {', '.join(processes)} (logs in {logs.relative_to(ROOT)}/)", flush=True)
        deadline = time.monotonic() + 30
        while not _check("worker"):
            dead = [name for name, proc in processes.items() if proc.poll() is not None]
            if dead or time.monotonic() > deadline:
                print(f"the worker did not start ({', '.join(dead) or 'no pong'}): see var/log/", flush=True)
                return 1
            time.sleep(0.5)
        started = datetime.now(UTC).replace(microsecond=0)
        since = started.strftime("%Y-%m-%dT%H:%M:%S")
        code = _sh(BIN / "avrr", "demo", check=False)
        if code:
            return code
        print("\nwaiting for the workers to run the story's events (60 s at most)", flush=True)
        code = _sh(BIN / "avrr", "wait-idle", "--since", since, "--timeout", "60", check=False)
        if "smtp" in processes and (mail / "new").is_dir():
            caught = [m for m in (mail / "new").iterdir() if m.stat().st_mtime >= started.timestamp()]
            print(f"e-mails caught by the local SMTP sink (Maildir var/mail): {len(caught)}")
        print("health checks:", flush=True)
        healthy = all([_check(name) for name in PROCESSES])
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
