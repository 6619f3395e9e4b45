"""The ops dashboard in a real headless Chromium (Debian's, driven by Playwright) against the
whole engine: PostgreSQL, uvicorn serving the API, a private redis-server, a Celery worker and
the outbox relay. An e-mail the SMTP server refuses leaves a dead letter; the ops person logs
in with a token from `avrr token create`, sees the worker, fixes nothing but the server, presses
Replay and watches the job become done. A caseworker's token is refused with a clear message."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import select

from config.settings import Settings
from tests.conftest import OFFICES, REQUIRE_SERVICES
from tests.integration.processes import (
    ROOT,
    Popen,
    RedisServer,
    start_api,
    start_relay,
    start_worker,
    stop,
    wait_for,
    wait_for_pool,
)
from tests.servers import Inbox, free_port
from tests.support import register
from workflow.adapters import tables as tb
from workflow.adapters.clock import SystemClock
from workflow.adapters.db import make_engine
from workflow.adapters.jobs import SqlDeadLetters
from workflow.adapters.tokens import SqlTokens
from workflow.adapters.views import ensure_office
from workflow.bootstrap import App, bootstrap
from workflow.demo import HOUSEHOLD
from workflow.domain.actors import Role

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

CHROMIUM = os.environ.get("AVRR_CHROMIUM", "/usr/bin/chromium")
PRINCIPAL_EMAIL = HOUSEHOLD[0]["email"]
TIMEOUT_MS = 20_000


@pytest.fixture
def browser_api() -> Any:
    """Playwright's sync API, or a skip (a failure in CI) saying what is missing, before any
    process is started."""
    missing = None
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        missing = f"no Chromium at {CHROMIUM} (apt-get install chromium, or set AVRR_CHROMIUM)"
    try:
        from playwright import sync_api
    except ImportError:
        missing = missing or "the playwright package is not installed (pip install -e '.[dev]')"
    if missing:
        (pytest.fail if REQUIRE_SERVICES else pytest.skip)(missing)
    return sync_api


class RefusingInbox(Inbox):
    """Refuses the family's address for good (550) while ``refusing``: a permanent failure, so the
    job is dead-lettered at once; the office's mail still goes through."""

    refusing = True

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if self.refusing and address == PRINCIPAL_EMAIL:
            return "550 5.1.1 mailbox unavailable"
        return await super().handle_RCPT(server, session, envelope, address, options)


@dataclass
class Deployment:
    app: App
    url: str
    env: dict[str, str]
    inbox: RefusingInbox


@pytest.fixture
def deployment(browser_api: Any, pg_url: str, tmp_path: Path) -> Iterator[Deployment]:
    db = make_engine(pg_url, pool_size=4)
    app = bootstrap(Settings(database_url=pg_url, environment="test", secret_key="x" * 40), SystemClock(), db)
    for office in OFFICES:
        ensure_office(app.db, *office)
    inbox = RefusingInbox()
    with ExitStack() as stack:
        broker = RedisServer(tmp_path / "redis").start()
        stack.callback(broker.stop)
        controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
        controller.start()
        stack.callback(controller.stop)
        env = {
            "AVRR_ENVIRONMENT": "test",
            "AVRR_SECRET_KEY": "test-secret-key-of-at-least-32-characters",
            "AVRR_DATABASE_URL": pg_url,
            "AVRR_BROKER_URL": broker.url(),
            "AVRR_SMTP_HOST": "127.0.0.1",
            "AVRR_SMTP_PORT": str(controller.port),
            "AVRR_SMS_SINK": str(tmp_path / "sms.jsonl"),
            "AVRR_LOG_LEVEL": "WARNING",
        }
        port = free_port()
        processes: list[Popen] = []
        stack.callback(lambda: [stop(p) for p in reversed(processes)])
        processes.append(start_api(env, port, tmp_path / "api.log"))
        worker = start_worker(pg_url, broker.url(), tmp_path / "worker.log", 1, env)
        processes.append(worker)
        processes.append(start_relay(pg_url, broker.url(), tmp_path / "relay.log"))
        wait_for_pool(worker, 1)
        yield Deployment(app, f"http://127.0.0.1:{port}", env, inbox)
    db.dispose()


def ops_token(deployment: Deployment) -> str:
    """As the README says: `avrr token create ... --role ops` prints the token on stdout."""
    argv = ["token", "create", "--actor", "ops-anna", "--office", "tallinn", "--role", "ops"]
    made = subprocess.run(
        [sys.executable, "-m", "workflow", *argv, "--name", "dashboard test", "--days", "1"],
        cwd=ROOT,
        env={**os.environ, **deployment.env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return made.stdout.strip()


def dead_letters(app: App) -> list[Any]:
    return SqlDeadLetters(app.db).open()


def job_status(app: App, event_id: str, effect: str) -> str | None:
    j = tb.jobs.c
    with app.db.connect() as conn:
        return conn.scalar(select(j.status).where(j.event_id == event_id, j.effect == effect))


def test_ops_see_the_worker_and_replay_a_dead_letter_until_it_is_delivered(
    browser_api: Any, deployment: Deployment, tmp_path: Path
) -> None:
    sync_api, expect, app = browser_api, browser_api.expect, deployment.app
    token = ops_token(deployment)
    caseworker, _ = SqlTokens(app.db).create(
        "e2e", "tll-caseworker", "tallinn", [Role.CASEWORKER], timedelta(days=1), SystemClock().now()
    )
    case_id = register(app).case_id
    (letter,) = wait_for(lambda: dead_letters(app), 30, "the refused e-mail's dead letter")
    assert letter.case_id == case_id and "550" in letter.error

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        requested: list[str] = []
        console: list[str] = []
        page.on("request", lambda request: requested.append(request.url))
        page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
        failed: list[tuple[int, str]] = []
        page.on("response", lambda r: failed.append((r.status, r.url)) if r.status >= 400 else None)
        page.goto(f"{deployment.url}/ops/")
        by = page.get_by_test_id

        # A caseworker's token: refused, and the page says why.
        by("token-input").fill(caseworker)
        by("login-button").click()
        expect(by("login-error")).to_be_visible()
        expect(by("login-error")).to_contain_text("403")
        expect(by("login-error")).to_contain_text("ops role")
        expect(by("dashboard")).to_be_hidden()

        # The ops token: the worker of this test is online, on the avrr queue.
        by("token-input").fill(token)
        by("login-button").click()
        expect(by("updated-at")).to_contain_text("updated ")
        worker = page.locator('[data-testid="worker-row"]')
        expect(worker).to_have_count(1)
        name = worker.get_attribute("data-worker") or ""
        assert name.startswith(f"test-{os.getpid()}-") and name.endswith(f"@{socket.gethostname()}")
        expect(worker.locator("td").nth(1)).to_have_text("avrr")
        expect(worker.locator("td").nth(2)).to_have_text("prefork")
        expect(by("no-workers")).to_be_hidden()

        # The dead letter, with its error; the mail server is fixed, then Replay.
        row = page.locator(f'[data-testid="dead-letter-row"][data-id="{letter.id}"]')
        expect(row).to_have_attribute("data-case", case_id)
        expect(row.locator("td.error")).to_contain_text("550")
        expect(by("dead-letters-open")).to_have_text("1")
        job = page.locator(
            f'[data-testid="job-row"][data-event="{letter.event_id}"][data-effect="{letter.effect}"]'
        )
        expect(job).to_have_attribute("data-status", "dead")
        deployment.inbox.refusing = False
        row.get_by_test_id("replay-button").click()
        expect(by("replay-note")).to_contain_text(f"replayed dead letter {letter.id}")

        # The worker ran it again: gone from the dead letters, done among the jobs.
        expect(row).to_have_count(0)
        expect(by("dead-letters-empty")).to_be_visible()
        expect(job).to_have_attribute("data-status", "done")
        assert job_status(app, letter.event_id, letter.effect) == "done"
        assert dead_letters(app) == []
        assert [m["To"] for m in deployment.inbox.received()] == [PRINCIPAL_EMAIL]

        # The case's timeline: where it stands on the lifecycle, and its job done.
        job.get_by_test_id("case-link").click()
        expect(by("timeline")).to_be_visible()
        expect(by("timeline-case")).to_have_text(case_id)
        current = page.locator('[data-testid="diagram-state"].current')
        expect(current).to_have_attribute("data-state", "inquiry")
        expect(
            page.locator(f'[data-testid="timeline-job"][data-effect="{letter.effect}"]')
        ).to_have_attribute("data-status", "done")
        expect(page.locator('[data-testid="event-row"]')).to_contain_text(["sent"])
        page.screenshot(path=tmp_path / "timeline.png", full_page=True)  # kept by pytest, for a look
        by("timeline-close").click()
        expect(by("timeline")).to_be_hidden()

        # Log out: the token leaves the tab.
        by("logout-button").click()
        expect(by("login-form")).to_be_visible()
        assert page.evaluate("sessionStorage.length") == 0
        browser.close()

    assert all(url.startswith(deployment.url) for url in requested), requested  # nothing from elsewhere
    # The one refusal is the caseworker's; no policy violation, no script error, no missing asset.
    assert failed == [(403, f"{deployment.url}/ops/overview")]
    assert [line for line in console if line.startswith("error")] == [
        "error: Failed to load resource: the server responded with a status of 403 (Forbidden)"
    ]
    assert not [line for line in console if "Content Security Policy" in line], console
