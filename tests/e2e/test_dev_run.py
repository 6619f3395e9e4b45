"""The README's first command, `python3 dev.py run`, on a copy of the checkout: the embedded
default (SQLite, the broker in files, no server) with a real API, worker, relay and beat."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.processes import free_port

ROOT = Path(__file__).resolve().parents[2]


def _checkout_copy(target: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(
        b"\0"
    )
    for name in filter(None, (f.decode() for f in files)):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    # This test's own environment stands for ./.venv. dev.py installs into it only when
    # pyproject.toml differs from what it was installed from; that install would point the
    # shared environment at this copy, so the test refuses to run then.
    stamp = Path(sys.prefix) / ".installed-from"
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if not stamp.is_file() or stamp.read_text() != digest:
        pytest.fail("the environment is not installed from this pyproject.toml: run python3 dev.py setup")
    (target / ".venv").symlink_to(Path(sys.prefix))


def test_dev_py_run_walks_the_story_through_real_processes(tmp_path: Path) -> None:
    checkout = tmp_path / "avrr"
    checkout.mkdir()
    _checkout_copy(checkout)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVRR_")}
    env["AVRR_API_PORT"] = str(free_port())
    run = subprocess.run(
        [sys.executable, "dev.py", "run"],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    out = run.stdout
    assert run.returncode == 0, f"{out[-4000:]}\n{run.stderr[-3000:]}"
    jobs = re.search(r"jobs: (\d+) done, (\d+) dead, (\d+) running, (\d+) not yet picked up", out)
    assert jobs is not None, out[-3000:]
    assert int(jobs.group(1)) > 20 and jobs.groups()[1:] == ("0", "0", "0")
    assert re.search(r"events: (\d+) committed, 0 not yet relayed", out)
    for process in ("api", "relay", "beat"):
        assert re.search(rf"^  {process}\b.*: healthy", out, re.MULTILINE), process
    assert re.search(r"^  worker .*: healthy", out, re.MULTILINE)
    assert "ops dashboard: http://127.0.0.1:" in out
    tokens = re.findall(r"avrr_[0-9a-f]{12}_[A-Za-z0-9_-]+", out)
    assert len(set(tokens)) == 2, "a caseworker's and an ops token"
    assert (checkout / "var" / "avrr.sqlite3").is_file()
    assert (checkout / "var" / "sms.jsonl").read_text().count("\n") >= 10
