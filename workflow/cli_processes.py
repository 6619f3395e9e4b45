"""The long-running processes: `avrr serve` (the HTTP API), `avrr worker`, `avrr beat`, `avrr relay`,
`avrr flower`, each with `--check` (the health check docker-compose runs), and `avrr wait-idle` for
scripts and dev.py.

Celery, uvicorn and the API are imported inside the commands, so the rest of `avrr` starts without them.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from celery import Celery
    from fastapi import FastAPI

DATA_DIR = Path("var")
DEFAULT_QUEUE = "avrr"  # config/celery.py: task_default_queue
DEFAULT_SCHEDULE = DATA_DIR / "celerybeat-schedule"
DEFAULT_RELAY_HEARTBEAT = DATA_DIR / "relay.heartbeat"  # workers.relay.DEFAULT_HEARTBEAT
FRESH_SECONDS = 30.0
BEAT_MAX_INTERVAL = 10  # beat wakes at least this often, so its heartbeat stays fresh
FLOWER_PORT = 5555
API_PORT = 8000

CheckOpt = Annotated[bool, typer.Option("--check", help="health check: exit 0 when healthy, else 1")]
MaxAgeOpt = Annotated[float, typer.Option("--max-age", help="--check: the heartbeat's age limit, seconds")]


def _celery() -> Celery:
    from workers.app import app

    return app


def _fresh(path: Path, max_age: float, what: str) -> None:
    """Exit 0 when ``path`` was touched less than ``max_age`` seconds ago, else 1."""
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        typer.echo(f"{what}: unhealthy: no heartbeat at {path}", err=True)
        raise typer.Exit(1) from None
    if age >= max_age:
        typer.echo(f"{what}: unhealthy: heartbeat {age:.0f} s old (limit {max_age:.0f} s)", err=True)
        raise typer.Exit(1)
    typer.echo(f"{what}: healthy (heartbeat {age:.1f} s old)")


def worker(
    concurrency: Annotated[
        int | None,
        typer.Option("--concurrency", "-c", help="processes; default one per CPU (use 1-2 on SQLite)"),
    ] = None,
    queues: Annotated[str, typer.Option("--queues", "-Q", help="comma-separated queues")] = DEFAULT_QUEUE,
    name: Annotated[str, typer.Option("--name", "-n", help="node name")] = "",
    metrics_port: Annotated[
        int | None,
        typer.Option(help="serve Prometheus metrics on this port (default AVRR_WORKER_METRICS_PORT, off)"),
    ] = None,
    metrics_address: Annotated[
        str | None, typer.Option(help="address of the metrics port (default AVRR_WORKER_METRICS_ADDRESS)")
    ] = None,
    check: CheckOpt = False,
    timeout: Annotated[float, typer.Option(help="--check: seconds to wait for the pong")] = 5.0,
) -> None:
    """Run a Celery worker of workers.app (prefork), or with --check ping it."""
    node = name or f"avrr@{socket.gethostname()}"
    if not check:
        _metrics_dir("worker")  # before workers.app imports prometheus_client
    app = _celery()
    if check:
        replies = _ping(app, node, timeout)
        if not any(node in reply for reply in replies):
            typer.echo(f"worker {node}: unhealthy: no pong within {timeout:.0f} s", err=True)
            raise typer.Exit(1)
        typer.echo(f"worker {node}: healthy")
        return
    # Logging is ours (AVRR_LOG_LEVEL, workers/app.py), not Celery's: no --loglevel here.
    argv = ["worker", "-n", node, "-Q", queues, "--without-gossip", "--without-mingle"]
    if concurrency:
        argv += ["-c", str(concurrency)]
    from workers import metrics

    metrics.serve_on(metrics_port, metrics_address)
    app.worker_main(argv)


def _metrics_dir(service: str) -> None:
    """A fresh PROMETHEUS_MULTIPROC_DIR for this run unless the environment names one (docker-compose:
    a tmpfs per service): the service's processes each write their metrics there and a scrape adds
    them up. It must be set before prometheus_client is first imported; it is removed at exit."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    import atexit
    import shutil
    import tempfile

    path = tempfile.mkdtemp(prefix=f"avrr-{service}-metrics-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path


def _ping(app: Celery, node: str, timeout: float) -> list[dict[str, Any]]:
    # A health check must answer even when the broker is down: no endless reconnecting.
    app.conf.broker_connection_max_retries = 1
    try:
        replies: list[dict[str, Any]] = app.control.ping(destination=[node], timeout=timeout) or []
    except Exception as exc:  # the broker is unreachable: unhealthy, not a traceback
        typer.echo(f"worker {node}: unhealthy: {type(exc).__name__}", err=True)
        raise typer.Exit(1) from None
    return replies


def beat(
    schedule: Annotated[
        Path, typer.Option("--schedule", "-s", help="beat's schedule file (last run of each entry)")
    ] = DEFAULT_SCHEDULE,
    check: CheckOpt = False,
    max_age: MaxAgeOpt = FRESH_SECONDS,
) -> None:
    """Run celery beat for workers.app (config/celery.py: beat_schedule), or with --check test its heartbeat.

    Beat wakes at least every 10 s and touches SCHEDULE.heartbeat each time it does."""
    heartbeat = schedule.with_name(schedule.name + ".heartbeat")
    if check:
        _fresh(heartbeat, max_age, "beat")
        return
    from celery.beat import PersistentScheduler

    class HeartbeatScheduler(PersistentScheduler):  # type: ignore[misc]
        def tick(self, *args: Any, **kwargs: Any) -> float:
            heartbeat.touch()
            return float(super().tick(*args, **kwargs))

    schedule.parent.mkdir(parents=True, exist_ok=True)
    app = _celery()
    app.conf.beat_scheduler = HeartbeatScheduler
    code = app.start(["beat", "-s", str(schedule), "--max-interval", str(BEAT_MAX_INTERVAL), "--pidfile="])
    raise typer.Exit(code or 0)


def relay(
    interval: Annotated[float, typer.Option(help="seconds between polls when idle")] = 1.0,
    heartbeat: Annotated[
        Path, typer.Option(help="file touched on every turn of the loop")
    ] = DEFAULT_RELAY_HEARTBEAT,
    check: CheckOpt = False,
    max_age: MaxAgeOpt = FRESH_SECONDS,
) -> None:
    """Move committed outbox rows to the broker until SIGTERM or SIGINT; --check tests its heartbeat."""
    if check:
        _fresh(heartbeat, max_age, "relay")
        return
    from config.settings import get_settings
    from workers import relay as outbox_relay
    from workflow.bootstrap import bootstrap

    stop = threading.Event()

    def _stop(signum: int, _: FrameType | None) -> None:
        typer.echo(f"relay: {signal.Signals(signum).name}, stopping", err=True)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    db = bootstrap().db
    settings = get_settings()
    after = timedelta(seconds=settings.redeliver_after_seconds)
    linger = settings.relay_linger_ms / 1000
    try:
        outbox_relay.run(
            db, _celery(), stop, interval, heartbeat=heartbeat, redeliver_after=after, linger=linger
        )
    finally:
        db.dispose()


def flower(
    port: Annotated[int, typer.Option(help="HTTP port", envvar="FLOWER_PORT")] = FLOWER_PORT,
    address: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    check: CheckOpt = False,
) -> None:
    """Run Flower (Celery monitoring) for workers.app; refuses to start without authentication.

    Credentials come from FLOWER_BASIC_AUTH (user:password[,user2:password2]) or Flower's
    OAuth settings (FLOWER_AUTH and FLOWER_OAUTH2_*). --check asks its /healthcheck."""
    if check:
        _flower_check(port)
        return
    if not (os.environ.get("FLOWER_BASIC_AUTH") or os.environ.get("FLOWER_AUTH")):
        typer.echo("error: flower: set FLOWER_BASIC_AUTH=user:password (or FLOWER_AUTH and OAuth)", err=True)
        raise typer.Exit(2)
    code = _celery().start(["flower", f"--port={port}", f"--address={address}"])
    raise typer.Exit(code or 0)


def _flower_check(port: int) -> None:
    import urllib.request

    url = f"http://127.0.0.1:{port}/healthcheck"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            healthy = response.status == 200
    except OSError as exc:
        typer.echo(f"flower: unhealthy: {type(exc).__name__}", err=True)
        raise typer.Exit(1) from None
    if not healthy:
        raise typer.Exit(1)
    typer.echo("flower: healthy")


def api_app() -> FastAPI:
    """uvicorn's factory for `avrr serve`: each worker process (spawned, so it inherits nothing)
    sets up the engine's logging (JSON outside development, personal data redacted) first."""
    from config.logging import configure_logging
    from config.settings import get_settings
    from workflow.api.app import create_app

    settings = get_settings()
    configure_logging(json=settings.json_logs, level=settings.log_level)
    return create_app(settings=settings)


def serve(
    host: Annotated[str, typer.Option(help="address to listen on (0.0.0.0 in a container)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port", envvar="AVRR_API_PORT")] = API_PORT,
    workers: Annotated[
        int | None, typer.Option("--workers", "-w", help="processes (default AVRR_API_WORKERS, 2)")
    ] = None,
    access_log: Annotated[bool, typer.Option(help="log each request (uvicorn's access log)")] = True,
    check: CheckOpt = False,
    live: Annotated[bool, typer.Option("--live", help="--check: liveness only (GET /health/live)")] = False,
    timeout: Annotated[float, typer.Option(help="--check: seconds to wait for the answer")] = 5.0,
) -> None:
    """Serve the HTTP API with uvicorn until SIGTERM or SIGINT; --check asks its GET /health/ready
    (the database, the broker and the relay's lag), or GET /health/live with --live.

    The OpenAPI documentation is at /docs; every route but /health/* needs a bearer token
    (`avrr token create`)."""
    if check:
        address = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104
        _api_check(f"http://{address}:{port}/health/{'live' if live else 'ready'}", timeout)
        return
    import uvicorn

    from config.settings import get_settings

    _metrics_dir("api")  # each uvicorn worker inherits it: /metrics adds up every one of them
    # After a clean shutdown uvicorn raises the SIGTERM or SIGINT that stopped it again, for the
    # handler it found: this one takes it, so a clean stop exits 0 like the other processes.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
    uvicorn.run(
        f"{__name__}:api_app",
        factory=True,
        host=host,
        port=port,
        workers=workers or get_settings().api_workers,
        log_config=None,  # our logging (api_app), not uvicorn's: one format, redacted
        access_log=access_log,
        timeout_graceful_shutdown=20,  # a stop finishes the requests in flight, 20 s at most
    )


def _api_check(url: str, timeout: float) -> None:
    import json
    import urllib.error
    import urllib.request

    try:  # the URL is ours: http on the local address
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310
            healthy = response.status == 200 and json.load(response).get("status") == "ok"
    except urllib.error.HTTPError as exc:  # 503 from readiness: say which check failed
        try:
            failed = {k: v for k, v in json.load(exc).get("checks", {}).items() if v != "ok"}
        except ValueError:
            failed = {}
        typer.echo(f"api {url}: unhealthy: {exc.code} {failed or ''}".rstrip(), err=True)
        raise typer.Exit(1) from None
    except (OSError, ValueError) as exc:
        typer.echo(f"api {url}: unhealthy: {type(exc).__name__}", err=True)
        raise typer.Exit(1) from None
    if not healthy:
        typer.echo(f"api {url}: unhealthy", err=True)
        raise typer.Exit(1)
    typer.echo(f"api {url}: healthy")


def wait_idle(
    timeout: Annotated[float, typer.Option(help="give up after this many seconds")] = 60.0,
    since: Annotated[
        datetime | None, typer.Option(help="only events that occurred from this time on (UTC)")
    ] = None,
    sms_sink: Annotated[Path, typer.Option(help="the SMS file sink to count")] = DATA_DIR / "sms.jsonl",
) -> None:
    """Wait until the workers have run every committed event, then print what they did.

    Done means: no outbox row unsent, and every job the relay published (one per runnable effect
    of each event) has a row that is done or dead. Exit 0 when done, 1 on timeout."""
    from workflow.bootstrap import bootstrap

    db = bootstrap().db
    start = since.replace(tzinfo=since.tzinfo or UTC) if since else None
    deadline = time.monotonic() + timeout
    try:
        while True:
            progress = _progress(db, start)
            if progress["idle"] or time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        for line in _summary(db, progress, sms_sink, start):
            typer.echo(line)
    finally:
        db.dispose()
    if not progress["idle"]:
        typer.echo(f"not finished after {timeout:.0f} s", err=True)
        raise typer.Exit(1)


def _progress(db: Any, start: datetime | None) -> dict[str, Any]:
    from sqlalchemy import func, select

    from workflow.adapters import tables as tb
    from workflow.service_layer.effects import runnable_effects

    o, j = tb.outbox.c, tb.jobs.c
    events = select(o.event_id).where(o.occurred_at >= start) if start else select(o.event_id)
    with db.connect() as conn:
        types = conn.execute(
            select(o.event_type, func.count(), func.count(o.sent_at))
            .where(o.event_id.in_(events))
            .group_by(o.event_type)
        ).all()
        statuses = dict(
            conn.execute(
                select(j.status, func.count()).where(j.event_id.in_(events)).group_by(j.status)
            ).all()
        )
    expected = sum(len(runnable_effects(event_type)) * n for event_type, n, _ in types)
    unsent = sum(n - sent for _, n, sent in types)
    finished = statuses.get("done", 0) + statuses.get("dead", 0)
    return {
        "events": sum(n for _, n, _ in types),
        "unsent": unsent,
        "expected": expected,
        "statuses": statuses,
        "idle": unsent == 0 and finished >= expected and not statuses.get("running"),
        "events_query": events,
    }


def _summary(db: Any, progress: dict[str, Any], sms_sink: Path, since: datetime | None) -> list[str]:
    from sqlalchemy import func, inspect, select

    from workflow.adapters import tables as tb

    events, statuses = progress["events_query"], progress["statuses"]
    j, t = tb.jobs.c, tb.tasks.c
    with db.connect() as conn:
        tasks = conn.execute(
            select(t.kind, func.count()).where(t.source_event_id.in_(events)).group_by(t.kind)
        ).all()
        errors = conn.execute(
            select(j.last_error, func.count())
            .where(j.event_id.in_(events), j.status != "done", j.last_error.is_not(None))
            .group_by(j.last_error)
            .order_by(func.count().desc())
            .limit(5)
        ).all()
        channels: dict[str, int] | None = None
        if "deliveries" in tb.metadata.tables and inspect(conn).has_table("deliveries"):
            deliveries = tb.metadata.tables["deliveries"].c
            channels = dict(
                conn.execute(
                    select(deliveries.channel, func.count())
                    .where(deliveries.event_id.in_(events))
                    .group_by(deliveries.channel)
                ).all()
            )
    others = {k: v for k, v in statuses.items() if k not in ("done", "dead", "running")}
    lines = [
        f"events: {progress['events']} committed, {progress['unsent']} not yet relayed",
        f"jobs: {statuses.get('done', 0)} done, {statuses.get('dead', 0)} dead, "
        f"{statuses.get('running', 0)} running, "
        f"{max(progress['expected'] - sum(statuses.values()), 0)} not yet picked up"
        + "".join(f", {n} {status}" for status, n in others.items()),
        f"tasks created: {sum(n for _, n in tasks)}"
        + (
            f" ({', '.join(f'{kind} x{n}' if n > 1 else kind for kind, n in sorted(tasks))})" if tasks else ""
        ),
    ]
    if channels is not None:
        lines.append(
            "deliveries: " + (", ".join(f"{c} {n}" for c, n in sorted(channels.items())) or "none recorded")
        )
        if not channels.get("email"):
            lines.append("e-mail: none delivered (no SMTP server in development? see the errors below)")
    else:
        lines.append("notifications: not run by the workers yet (no deliveries table)")
    lines.append(_sms_line(sms_sink, since))
    if errors:
        lines.append("errors of the jobs not done:")
        lines += [f"  {n} x {error}" for error, n in errors]
    return lines


def _sms_line(sink: Path, since: datetime | None) -> str:
    """How many SMS the file sink holds (from ``since`` on, by their sent_at)."""
    import json

    if not sink.exists():
        return f"SMS in {sink}: none (no file)"
    stamps: list[datetime] = []
    for line in sink.read_text().splitlines():
        try:
            stamp = datetime.fromisoformat(json.loads(line)["sent_at"])
            stamps.append(stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC))
        except (ValueError, KeyError, TypeError):  # blank, or a line torn by a writer that died
            continue
    if since is None:
        return f"SMS in {sink}: {len(stamps)}"
    recent = sum(1 for stamp in stamps if stamp >= since)
    return f"SMS written to {sink}: {recent} ({len(stamps)} in the file)"


def register(app: typer.Typer) -> None:
    """Adds the process commands to the `avrr` app."""
    for command in (serve, worker, beat, relay, flower, wait_idle):
        app.command(command.__name__.replace("_", "-"))(command)
