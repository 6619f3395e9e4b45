"""E-mail over real SMTP: one connection per message, a Message-ID derived from the idempotency key."""

from __future__ import annotations

import hashlib
import smtplib
import ssl
from email.message import EmailMessage
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

    def build(self, message: Message) -> EmailMessage:
        email = EmailMessage()
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
            with smtplib.SMTP(self._host, self._port, timeout=self._timeout) as smtp:
                if self._starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if self._username is not None:
                    smtp.login(self._username, self._password or "")
                smtp.send_message(email)
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
