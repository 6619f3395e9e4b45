#!/usr/bin/env python3
"""Two commands on a fresh machine with only Python 3.11+: `python3 dev.py run` and `python3 dev.py test`.

Creates ./.venv, installs the project from pyproject.toml (again only when it changes), then
runs the engine on its embedded default or runs the checks and the test suite.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
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


def run() -> int:
    """The engine on its embedded default: SQLite under ./var, the seed family's story."""
    _sh(BIN / "avrr", "db", "upgrade")
    return _sh(BIN / "avrr", "demo", check=False)


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
    return run() if command == "run" else test(extra)


if __name__ == "__main__":
    sys.exit(main())
