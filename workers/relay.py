"""The outbox relay process: `python -m workers.relay` (or `avrr relay`)."""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import structlog
from celery import Celery
from kombu.exceptions import BatchPublishError, ChannelError
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.exc import OperationalError as DatabaseError

from workers.jobs import send_events
from workflow.adapters.jobs import SqlJobStore
from workflow.adapters.relay import MAX_SENDS, OutboxMessage, OutboxRelay
from workflow.domain.effects import EFFECTS
from workflow.service_layer.effects import Event, runnable_effects

log = structlog.get_logger(__name__)
CHANNEL = "avrr_outbox"
# Touched on every turn of the loop; `avrr relay --check` reads its age.
DEFAULT_HEARTBEAT = Path("var/relay.heartbeat")


# Messages buffered before kombu sends them (one Redis pipeline: one round trip per flush).
PUBLISH_BATCH = 500
# A round of the relay goes out in about SPREAD messages, so that every process of a worker
# (two per CPU) gets one: an event per message while the round is small (the relay keeps up and
# latency is what counts), several to a message, EVENTS_PER_MESSAGE at most, for a backlog.
SPREAD = 8
EVENTS_PER_MESSAGE = 16
# The relay's linger (AVRR_RELAY_LINGER_MS), off by default: a round starts no sooner than this
# after the last one started, so a commit that closely follows a round waits for the next with
# the commits that came meanwhile, and a round goes in as few messages as hold it (spread 1).
# Each round costs the relay, PostgreSQL and Redis the same few round trips, and each message
# costs the workers about a bare Celery task, however many events it carries: a throughput
# setting. bench/pipeline.py, tasks workload, 10 ms: 3.4-4.3 events a message at 300-400/s
# (1.3-2.7 without), but 6.1-6.2 ms of CPU an event against 6.1-6.6 without (no clear gain on
# that noisy machine), and the p50 at 200/s rose from 9-11 ms to 14-34 ms, past the 25 ms
# target. README.md: the figures.
LINGER = 0.0


def pack(events: Sequence[Event], spread: int = SPREAD, most: int = EVENTS_PER_MESSAGE) -> list[list[Event]]:
    """The events in messages, cases in the order of their first event. A case's events go in
    one message, in their order, when there are no more than ``most`` of them: one task runs
    them in turn, so the later never overtakes the earlier (a case with more fills messages of
    ``most`` in turn). The others share messages of up to ``base`` events, ``base`` filling
    the fewest messages that hold the batch (and at least ``spread`` of them, one event each
    for a batch of no more than ``spread``)."""
    by_case: dict[str, list[Event]] = {}
    for event in events:
        by_case.setdefault(event.case_id, []).append(event)
    count = min(len(events), max(spread, math.ceil(len(events) / most)))
    base = max(1, math.ceil(len(events) / max(count, 1)))
    messages: list[list[Event]] = []
    current: list[Event] = []
    for case_events in by_case.values():
        if current and len(current) + len(case_events) > base:
            messages.append(current)
            current = []
        if len(case_events) > base:  # alone, in as few messages as it needs
            messages += [case_events[i : i + most] for i in range(0, len(case_events), most)]
        else:
            current += case_events
    if current:
        messages.append(current)
    return messages


def celery_publisher(app: Celery, spread: int = SPREAD) -> Callable[[Sequence[OutboxMessage]], None]:
    """The events that have runnable effects, packed into messages (``pack``), on one producer
    connection per batch, sent together in a Redis pipeline when the batch is complete (kombu's
    Producer.batch).

    A failed pipeline raises (kombu's BatchPublishError: some of it may have gone out); the
    relay's transaction rolls back and the rows go out again later, and the jobs inbox makes a
    second copy of a message do nothing."""

    def publish(batch: Sequence[OutboxMessage]) -> None:
        events = [
            Event(m.event_id, m.event_type, m.case_id, m.occurred_at)
            for m in batch
            if runnable_effects(m.event_type)
        ]
        with app.producer_or_acquire() as producer, producer.batch(max_size=PUBLISH_BATCH):
            for message in pack(events, spread):
                send_events(app, message, producer)

    return publish


# The relay holds back while this many messages wait in the workers' queue (two per worker
# process at the default -c 4: none of them idles), checking again after HOLD_PAUSE seconds,
# then less often (HOLD_PAUSE_MOST).
# bench/pipeline.py, tasks workload at 200/s: 4 and 5 ms gave p50 21 ms, 8 and 2 ms 7 ms; both
# sustained 300/s where the relay without a gate fell behind at 250/s.
HOLD_AT = 8
HOLD_PAUSE = 0.002
# While it holds, the pause doubles up to this: at hold_at messages waiting the workers have
# more than that much work queued, and each look costs the relay and Redis a round trip.
HOLD_PAUSE_MOST = 0.008
PROBE_TIMEOUT = 0.5  # seconds a look at the queue may take
BLIND_SECONDS = 5.0  # after a failed look, the relay goes on without looking for this long


class QueueProbe:
    """How many messages wait in the workers' queue, over one connection kept open: the relay's
    gate asks before every round, its search for lost messages once a minute."""

    def __init__(self, app: Celery) -> None:
        self._app = app
        self._queue = app.conf.task_default_queue
        self._conn: Any = None
        self._client: Any = None
        self._blind_until = 0.0

    def waiting(self) -> int | None:
        """Messages waiting, or None when the broker cannot say. After a failed look it does
        not look again for BLIND_SECONDS: a broker that is away must not slow each round of the
        relay (whose publish finds that out and backs off) by a connect timeout."""
        if time.monotonic() < self._blind_until:
            return None
        try:
            if self._conn is None:
                # One try, half a second at most: kombu would otherwise retry the connection
                # for seconds, and a socket without a timeout can wait for ever.
                self._conn = self._app.connection_for_read(
                    connect_timeout=PROBE_TIMEOUT,
                    transport_options={
                        "max_retries": 0,
                        "socket_timeout": PROBE_TIMEOUT,
                        "socket_connect_timeout": PROBE_TIMEOUT,
                    },
                )
            channel = self._conn.default_channel
            if self._conn.transport.driver_type == "redis":
                # One LLEN on the channel's own pool (kombu's key prefix applies). Our messages
                # carry no priority: kombu keeps them in the list named after the queue.
                if self._client is None:
                    # Kept: kombu makes a client per conn_or_acquire (its pool's connection is
                    # the same), and at a look every few milliseconds under load that was half
                    # the relay's CPU (py-spy).
                    with channel.conn_or_acquire() as client:
                        self._client = client
                return int(self._client.llen(self._queue))
            try:
                return int(channel.queue_declare(queue=self._queue, passive=True).message_count)
            except ChannelError:  # never declared: no worker has ever listened, nothing waits
                return 0
        except Exception as exc:  # the broker is away
            self.close()
            self._blind_until = time.monotonic() + BLIND_SECONDS
            log.warning("relay.queue_unknown", error=type(exc).__name__)
            return None

    def close(self) -> None:
        conn, self._conn, self._client = self._conn, None, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.release()


class QueueGate:
    """Holds the relay back while the workers are behind: at least ``hold_at`` messages wait in
    their queue (none of the workers' processes has taken them). The events wait in the outbox
    meanwhile, where they are safe and counted (`avrr ops status`), and go out together when the
    queue has room, packed several to a message: the workers then pay Celery's cost per message
    once for several events (bench/pipeline.py). Never longer than ``longest`` at a time, so
    events still reach a broker whose workers are all away (as they did before this gate).
    A broker that cannot say how long the queue is does not hold anything back."""

    def __init__(
        self, app: Celery, hold_at: int = HOLD_AT, pause: float = HOLD_PAUSE, longest: float = 1.0
    ) -> None:
        self.probe = QueueProbe(app)
        self.hold_at, self._pause, self._longest = hold_at, pause, longest

    def waiting(self) -> int:
        """Messages waiting in the workers' queue (0 when the broker cannot say)."""
        return self.probe.waiting() or 0

    def wait(self, stop: threading.Event) -> float:
        """Returns once the queue has room (or ``longest`` passed, or ``stop`` is set); how long
        it held the relay back."""
        started, pause = time.monotonic(), self._pause
        while self.waiting() >= self.hold_at and time.monotonic() - started < self._longest:
            if stop.wait(pause):
                break
            pause = min(2 * pause, max(self._pause, HOLD_PAUSE_MOST))
        return time.monotonic() - started

    def close(self) -> None:
        self.probe.close()


# The LISTEN connection: a dead peer (a database host gone without a reset) is noticed within
# about a minute, not after the kernel's retransmissions (15 minutes).
LISTEN_OPTIONS: dict[str, Any] = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}


class Waker:
    """Sleeps until PostgreSQL NOTIFYs a commit to the outbox, or the poll interval passes.

    The relay never depends on it: without its connection (the database away at start, a
    restart, a session ended by the server) it polls every interval and connects again at the
    next wait; the first wait after a reconnect returns at once, since commits notified while it
    was away were not heard."""

    def __init__(self, db: Engine, interval: float) -> None:
        self._interval = interval
        self._url: str | None = None
        self._conn: psycopg.Connection[object] | None = None
        if db.dialect.name == "postgresql":
            self._url = db.url.set(drivername="postgresql").render_as_string(hide_password=False)
            self._listen()

    def _listen(self) -> bool:
        assert self._url is not None
        conn: psycopg.Connection[object] | None = None
        try:
            conn = psycopg.connect(self._url, autocommit=True, **LISTEN_OPTIONS)
            conn.execute(f"LISTEN {CHANNEL}")
        except psycopg.Error as exc:
            if conn is not None:
                conn.close()
            log.warning("relay.listen_unavailable", error=type(exc).__name__, poll_every=self._interval)
            return False
        self._conn = conn
        return True

    def wait(self) -> None:
        if self._conn is None:
            if self._url is None or not self._listen():
                time.sleep(self._interval)
            return
        try:
            for _ in self._conn.notifies(timeout=self._interval, stop_after=1):
                pass
            # Every commit to the outbox notifies: those already here are answered by the one
            # round that follows, not by a round each.
            for _ in self._conn.notifies(timeout=0):
                pass
        except psycopg.Error as exc:
            log.warning("relay.listen_lost", error=type(exc).__name__)
            self.close()

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()


MAX_BACKOFF = 20.0

# How often the relay looks for events whose message was lost (see OutboxRelay.redeliver_stalled).
SWEEP_SECONDS = 60.0
SWEEP_ROUNDS = 20


def jobs_per_type() -> dict[str, int]:
    """Each event type with effects, and its number of jobs."""
    return {event_type: len(runnable_effects(event_type)) for event_type in EFFECTS}


def queue_is_empty(app: Celery) -> bool:
    """Nothing waits in the workers' queue (a broker that cannot say counts as not empty)."""
    probe = QueueProbe(app)
    try:
        return probe.waiting() == 0
    finally:
        probe.close()


def file_lost(db: Engine) -> Callable[[OutboxMessage], None]:
    """Files the unfinished jobs of an event sent MAX_SENDS times and never run in the dead
    letters (a job already done or dead stays as it is), where `avrr ops replay` takes them."""
    store = SqlJobStore(db)

    def give_up(message: OutboxMessage) -> None:
        error = f"message lost: sent {MAX_SENDS} times, never run"
        for job in Event(message.event_id, message.event_type, message.case_id).jobs():
            try:
                store.dead_letter(job, error, datetime.now(UTC))
            except IntegrityError:
                # Its row appeared meanwhile (another relay filed it, or a late copy of the
                # message started it): it is accounted for.
                log.warning("outbox.give_up_raced", event_id=job.event_id, effect=job.effect)
        log.error("outbox.given_up", event_id=message.event_id, case_id=message.case_id)

    return give_up


class Sweeper:
    """The relay's search for lost messages, once a minute. Settled events are marked every
    time; unsettled ones are sent again only when the workers' queue was empty at this search
    and at the one before: a message a worker had reserved but not started when the queue
    first emptied has started by the next (so it is not run twice at once), and nothing is sent
    again while the workers are down or behind (no copies pile up)."""

    def __init__(
        self,
        relay: OutboxRelay,
        app: Celery,
        after: timedelta,
        give_up: Callable[[OutboxMessage], None],
        probe: QueueProbe | None = None,
    ) -> None:
        self._relay, self._after, self._give_up = relay, after, give_up
        self._probe = probe or QueueProbe(app)  # the relay's gate's, in the relay's loop
        self._was_empty = False

    def __call__(self) -> None:
        empty = self._probe.waiting() == 0  # a broker that cannot say counts as not empty
        resend, self._was_empty = empty and self._was_empty, empty
        for _ in range(SWEEP_ROUNDS):  # rounds while rows keep coming of age (a busy minute)
            found = self._relay.redeliver_stalled(self._after, resend_lost=resend)
            for message in found.given_up:
                self._give_up(message)
            self._relay.settle([m.id for m in found.given_up])
            progress = found.settled + found.resent + len(found.given_up)
            if found.examined < self._relay.sweep_size or progress == 0:
                return


def run(
    db: Engine,
    app: Celery,
    stop: threading.Event,
    interval: float = 1.0,
    *,
    heartbeat: Path | None = DEFAULT_HEARTBEAT,
    redeliver_after: timedelta = timedelta(minutes=15),
    sweep_every: float = SWEEP_SECONDS,
    gate: QueueGate | None = None,
    linger: float = LINGER,
) -> None:
    """The relay's loop until ``stop`` is set. ``gate``: by default a QueueGate on the app's
    broker (pass one to tune it). ``linger``: the least time from one round's start to the
    next's (LINGER); with one, a round goes in as few messages as hold it."""
    publish = celery_publisher(app, spread=1 if linger > 0 else SPREAD)
    relay = OutboxRelay(db, publish, jobs_per_type=jobs_per_type())
    gate = gate or QueueGate(app)
    sweep = Sweeper(relay, app, redeliver_after, file_lost(db), gate.probe)
    waker = Waker(db, interval)
    if heartbeat is not None:
        heartbeat.parent.mkdir(parents=True, exist_ok=True)
    log.info("relay.started", database=db.dialect.name)
    backoff = interval
    next_sweep = time.monotonic() + sweep_every
    last_round = -math.inf
    try:
        while not stop.is_set():
            if heartbeat is not None:
                heartbeat.touch()
            gate.wait(stop)
            if (gap := last_round + linger - time.monotonic()) > 0 and stop.wait(gap):
                break
            last_round = time.monotonic()
            try:
                moved = relay.relay_once()
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + sweep_every
                    sweep()
                backoff = interval
            except (BrokerError, BatchPublishError, DatabaseError) as exc:
                # Rows stay unsent; they go out when the broker (or database) is back.
                log.warning("relay.unavailable", error=type(exc).__name__, retry_in=backoff)
                stop.wait(backoff)
                # At most 20 s, under the 30 s after which `avrr relay --check` calls a heartbeat
                # stale. A publish stuck on a Redis host gone silent can still take longer (its
                # socket timeout, 30 s, per try): the check then fails and a supervisor restarts the
                # relay, whose rows wait unsent meanwhile.
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            if moved < relay.batch_size:  # a full batch may have more behind it: go on at once
                waker.wait()
    finally:
        waker.close()
        gate.close()


def main() -> None:
    """`python -m workers.relay`: the relay as `avrr relay` runs it, its logging included (JSON
    outside development, at the settings' level; without it structlog's default printed every
    round's debug line in colour, a tenth of the relay's CPU)."""
    from config.logging import configure_logging
    from config.settings import get_settings
    from workers.app import app
    from workflow.bootstrap import bootstrap

    settings = get_settings()
    configure_logging(json=settings.json_logs, level=settings.log_level)
    stop = threading.Event()
    after = timedelta(seconds=settings.redeliver_after_seconds)
    try:
        run(bootstrap().db, app, stop, redeliver_after=after, linger=settings.relay_linger_ms / 1000)
    except KeyboardInterrupt:
        stop.set()


if __name__ == "__main__":
    main()
