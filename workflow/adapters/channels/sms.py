"""SMS gateways: a file sink several processes share safely (the default), and an HTTP gateway."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import structlog

from workflow.adapters.channels import post_json
from workflow.adapters.clock import SystemClock
from workflow.service_layer.notifications import Message, TransientDeliveryError
from workflow.service_layer.ports import Clock

log = structlog.get_logger(__name__)

DEFAULT_SINK = Path("var/sms.jsonl")
IDEMPOTENCY_HEADER = "Idempotency-Key"


class FileSinkSms:
    """Appends one JSON line per message; a key already in the file is not written again.

    An exclusive ``flock`` on the sink itself serialises every writer on this host, so the
    check for the key and the append are one step across processes. Each instance remembers
    the keys and the offset it has read, so a send reads only what others appended since."""

    def __init__(self, path: Path = DEFAULT_SINK, clock: Clock | None = None, fsync: bool = False) -> None:
        self.path = Path(path)
        self._clock = clock or SystemClock()
        self._fsync = fsync  # a killed process loses nothing without it; only a host crash would
        self._seen: set[str] = set()
        self._offset = 0

    def send(self, message: Message) -> None:
        try:
            self._append(message)
        except OSError as exc:  # a full disk, a sink on a mount that went away: try again later
            raise TransientDeliveryError(f"SMS sink not written: {type(exc).__name__}") from exc

    def _append(self, message: Message) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = self._catch_up(fd)
            if message.idempotency_key in self._seen:
                log.info("notification.duplicate_skipped", channel="sms", delivery_id=message.idempotency_key)
                return
            record = {
                "idempotency_key": message.idempotency_key,
                "to": message.recipient,
                "language": message.language,
                "body": message.body,
                "sent_at": self._clock.now().isoformat(),
            }
            line = json.dumps(record, ensure_ascii=False).encode() + b"\n"
            if size > self._offset:  # a torn line left by a writer that died: start a fresh one
                line = b"\n" + line
            _write_all(fd, line)
            if self._fsync:
                os.fsync(fd)
            self._seen.add(message.idempotency_key)
            self._offset = size + len(line)
        finally:
            os.close(fd)  # closing the descriptor releases the lock
        log.info("notification.sent", channel="sms", delivery_id=message.idempotency_key)

    def _catch_up(self, fd: int) -> int:
        """Read the complete lines appended since the last call; return the file's size."""
        size = os.fstat(fd).st_size
        if size < self._offset:  # truncated or replaced: start over
            self._seen.clear()
            self._offset = 0
        chunk = os.pread(fd, size - self._offset, self._offset)
        complete = chunk[: chunk.rfind(b"\n") + 1]
        for raw in complete.splitlines():
            try:
                self._seen.add(json.loads(raw)["idempotency_key"])
            except (ValueError, KeyError, TypeError):
                continue  # a torn line: it never counted as sent
        self._offset += len(complete)
        return size


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]


class HttpSmsGateway:
    """Posts ``{"to", "text", "language", "reference"}`` to an SMS provider's HTTP API."""

    def __init__(
        self, url: str, token: str | None = None, sender: str | None = None, timeout: float = 10.0
    ) -> None:
        self._url, self._token, self._sender, self._timeout = url, token, sender, timeout

    def send(self, message: Message) -> None:
        payload = {
            "to": message.recipient,
            "text": message.body,
            "language": message.language,
            "reference": message.idempotency_key,
        }
        if self._sender:
            payload["from"] = self._sender
        headers = {IDEMPOTENCY_HEADER: message.idempotency_key}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        status = post_json(self._url, json.dumps(payload).encode(), headers, self._timeout)
        log.info("notification.sent", channel="sms", delivery_id=message.idempotency_key, status=status)
