"""E-mail over real SMTP: a connection kept per process and reused, a Message-ID derived from the
idempotency key."""

from __future__ import annotations

import hashlib
import os
import smtplib
import ssl
import threading
import time
from email.headerregistry import BaseHeader, HeaderRegistry
from email.message import EmailMessage
from email.policy import default as default_policy
from email.utils import formatdate, parseaddr

import structlog

from workflow.service_layer.notifications import (
    DeliveryError,
    Message,
    PermanentDeliveryError,
    TransientDeliveryError,
)

log = structlog.get_logger(__name__)

IDEMPOTENCY_HEADER = "X-AVRR-Idempotency-Key"
# A connection idle this long is closed rather than reused (servers drop idle clients, some
# after a minute); one is closed after this many messages (servers cap messages per session).
IDLE_SECONDS = 30.0
MESSAGES_PER_CONNECTION = 100


class _KeptHeaderClasses(HeaderRegistry):
    """The standard registry, keeping the class it makes per header name: the stock one makes
    a new class (``type(...)``) for every header of every message, a third of the time it takes
    to build an e-mail. Headers behave exactly as with ``email.policy.default``."""

    def __init__(self) -> None:
        super().__init__()
        self._made: dict[str, type[BaseHeader]] = {}

    def __getitem__(self, name: str) -> type[BaseHeader]:
        key = name.lower()
        made = self._made.get(key)
        if made is None:
            made = self._made[key] = super().__getitem__(name)
        return made


POLICY = default_policy.clone(header_factory=_KeptHeaderClasses())


def message_id(idempotency_key: str, from_address: str) -> str:
    """The same key always gives the same Message-ID, so a resend is recognisable as one."""
    domain = parseaddr(from_address)[1].rpartition("@")[2] or "avrr.invalid"
    return f"<avrr.{hashlib.sha256(idempotency_key.encode()).hexdigest()[:40]}@{domain}>"


def _classify(code: int, detail: str) -> DeliveryError:
    """SMTP replies: 5xx says this will never be accepted; 4xx (or garbage) says try later."""
    if 500 <= code < 600:
        return PermanentDeliveryError(f"{detail}: SMTP {code}")
    return TransientDeliveryError(f"{detail}: SMTP {code}")


class SmtpChannel:
    def __init__(
        self,
        host: str,
        port: int,
        from_address: str,
        username: str | None = None,
        password: str | None = None,
        starttls: bool = False,
        timeout: float = 10.0,
    ) -> None:
        self._host, self._port, self._from = host, port, from_address
        self._username, self._password = username, password
        self._starttls, self._timeout = starttls, timeout
        self._lock = threading.Lock()  # one SMTP session: one message at a time
        self._smtp: smtplib.SMTP | None = None
        self._pid, self._used, self._last_used = 0, 0, 0.0

    def build(self, message: Message) -> EmailMessage:
        email = EmailMessage(policy=POLICY)
        try:
            email["From"] = self._from
            email["To"] = message.recipient
            email["Subject"] = message.subject
        except ValueError as exc:  # a newline or a malformed address: the same next time
            raise PermanentDeliveryError(f"unsendable header: {type(exc).__name__}") from None
        email["Message-ID"] = message_id(message.idempotency_key, self._from)
        email["Date"] = formatdate(localtime=False, usegmt=True)
        email.set_content(message.body)  # before Content-Language: it drops any Content-* header
        email["Content-Language"] = message.language
        email[IDEMPOTENCY_HEADER] = message.idempotency_key
        return email

    def send(self, message: Message) -> None:
        email = self.build(message)
        # Errors are re-raised ``from None``: smtplib's messages echo the recipient's address.
        try:
            with self._lock:
                self._send(email)
        except smtplib.SMTPRecipientsRefused as exc:  # one recipient per message
            code = min(code for code, _ in exc.recipients.values())
            raise _classify(code, "recipient refused") from None
        except smtplib.SMTPResponseException as exc:
            raise _classify(exc.smtp_code, type(exc).__name__) from None
        except smtplib.SMTPNotSupportedError:
            raise PermanentDeliveryError("the server does not support STARTTLS or AUTH") from None
        except OSError as exc:  # refused, reset, timed out, disconnected (SMTPException is an OSError)
            raise TransientDeliveryError(f"SMTP connection failed: {type(exc).__name__}") from None
        log.info("notification.sent", channel="email", delivery_id=message.idempotency_key)

    def close(self) -> None:
        with self._lock:
            self._drop(polite=True)

    def _send(self, email: EmailMessage) -> None:
        for first_try in (True, False):
            reused = self._reusable()
            smtp = self._smtp if reused and self._smtp is not None else self._connect()
            try:
                smtp.send_message(email)
            except (smtplib.SMTPServerDisconnected, ConnectionError):
                self._drop()
                if reused and first_try:
                    # The server closed the kept connection (idle, restarted): once more on a
                    # new one. Same Message-ID, should the first copy have got through after all.
                    continue
                raise
            except (smtplib.SMTPRecipientsRefused, smtplib.SMTPResponseException):
                # smtplib has sent RSET after the refusal, so the session is clean, unless the
                # server said it is closing (421: smtplib closed it) or the reset failed.
                if smtp.sock is None:
                    self._drop()
                    if reused and first_try:
                        continue  # a kept session the server timed out: it answers 421 once
                raise
            except BaseException:
                self._drop()  # in an unknown state (a timeout mid-reply): never reuse it
                raise
            self._used += 1
            self._last_used = time.monotonic()
            return

    def _reusable(self) -> bool:
        if self._smtp is None:
            return False
        if self._pid != os.getpid():  # inherited through fork: the parent's session, not ours
            self._smtp = None
            return False
        if self._used >= MESSAGES_PER_CONNECTION or time.monotonic() - self._last_used > IDLE_SECONDS:
            self._drop(polite=True)
            return False
        return True

    def _connect(self) -> smtplib.SMTP:
        smtp = smtplib.SMTP(self._host, self._port, timeout=self._timeout)
        try:
            if self._starttls:
                smtp.starttls(context=ssl.create_default_context())
            if self._username is not None:
                smtp.login(self._username, self._password or "")
        except BaseException:
            smtp.close()
            raise
        self._smtp, self._pid, self._used, self._last_used = smtp, os.getpid(), 0, time.monotonic()
        return smtp

    def _drop(self, polite: bool = False) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is None:
            return
        try:
            if polite and self._pid == os.getpid():
                smtp.quit()
        except (OSError, smtplib.SMTPException):
            pass
        finally:
            smtp.close()
