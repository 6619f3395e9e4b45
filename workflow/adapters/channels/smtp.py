"""E-mail over real SMTP: a connection kept per process and reused, a Message-ID derived from the
idempotency key."""

from __future__ import annotations

import binascii
import hashlib
import os
import re
import smtplib
import ssl
import threading
import time
from dataclasses import dataclass
from email.header import Header
from email.utils import formataddr, formatdate, getaddresses, parseaddr

import idna
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


CRLF = "\r\n"
LINE_END = re.compile(r"\r\n|\r|\n")  # not str.splitlines: it also splits at \v, \f, U+2028 ...
FOLD_AT = 78  # a header line longer than this is folded (RFC 5322 2.1.1)
# Base64 lines as RFC 2045 sets them (76 characters), each ended by CRLF.
BASE64_LINE = 57  # bytes of input per line of output


def _header(name: str, value: str) -> str:
    """One header line: ASCII as it is, anything else as RFC 2047 encoded words (UTF-8, folded).
    A line break in a value would start a header of its own: refused, and it would be the same
    next time."""
    if "\r" in value or "\n" in value:
        raise PermanentDeliveryError(f"unsendable header: a line break in {name}")
    if not value.isascii():
        value = Header(value, "utf-8", header_name=name).encode(linesep=CRLF)
    elif len(name) + 2 + len(value) > FOLD_AT:  # folded at spaces, as RFC 5322 asks of long lines
        value = Header(value, header_name=name).encode(linesep=CRLF)
    return f"{name}: {value}"


@dataclass(frozen=True, slots=True)
class Recipient:
    envelope: str  # the address for RCPT TO: its domain in ASCII (IDNA)
    header: str  # the To line
    utf8: bool  # a local part in UTF-8: sent only where the server takes it (SMTPUTF8)


def _address(value: str) -> Recipient:
    """The one recipient (``Name <a@b>`` keeps its name). A domain in another script (приклад.укр)
    goes in its ASCII form (IDNA: xn--...), which every server takes; a local part in another
    script needs the server's SMTPUTF8 (RFC 6531), and the message then goes as UTF-8. Two
    addresses, none, or a domain IDNA cannot write are refused for good."""
    if "\r" in value or "\n" in value:
        raise PermanentDeliveryError("unsendable header: a line break in To")
    found = getaddresses([value])
    if len(found) != 1 or "@" not in found[0][1]:
        raise PermanentDeliveryError("unsendable header: To is not one address")
    name, address = found[0]
    local, _, domain = address.rpartition("@")
    if not local or not domain:
        raise PermanentDeliveryError("unsendable header: To is not one address")
    if not domain.isascii():
        try:
            domain = idna.encode(domain, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError):
            raise PermanentDeliveryError("unsendable header: To has a domain IDNA cannot encode") from None
    envelope = f"{local}@{domain}"
    if local.isascii():
        return Recipient(envelope, _header("To", formataddr((name, envelope)) if name else envelope), False)
    # RFC 6532: the address as it is in the header; a name is still quoted or an encoded word
    # (formataddr does that, but refuses an address that is not ASCII: it gets a stand-in).
    named = formataddr((name, "a@b")).removesuffix(" <a@b>") + f" <{envelope}>" if name else envelope
    return Recipient(envelope, f"To: {named}", True)


def _body(text: str) -> tuple[str, bytes]:
    """The body and its transfer encoding: plain 7-bit ASCII as it is (CRLF line ends), anything
    else as UTF-8 in base64."""
    lines = LINE_END.split(text.removesuffix("\r\n").removesuffix("\n"))
    if text.isascii() and all(len(line) <= 998 for line in lines):
        return "7bit", (CRLF.join(lines) + CRLF).encode("ascii")
    raw = (CRLF.join(lines) + CRLF).encode("utf-8")  # text in canonical form: CRLF line ends
    chunks = (raw[i : i + BASE64_LINE] for i in range(0, len(raw), BASE64_LINE))
    return "base64", b"".join(binascii.b2a_base64(chunk, newline=False) + b"\r\n" for chunk in chunks)


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
        name, address = parseaddr(from_address)
        self._envelope_from = address or from_address
        # A display name in UTF-8 is encoded on its own; the address itself stays as it is.
        self._from_header = _header("From", formataddr((name, address)) if address else from_address)
        self._username, self._password = username, password
        self._starttls, self._timeout = starttls, timeout
        self._lock = threading.Lock()  # one SMTP session: one message at a time
        self._smtp: smtplib.SMTP | None = None
        self._pid, self._used, self._last_used = 0, 0, 0.0

    def build(self, message: Message) -> tuple[Recipient, bytes]:
        """The recipient and the message as it goes over the wire. Written out by
        hand, not through ``email.message.EmailMessage``: building and flattening one with the
        standard library's modern policy took a third of a worker's CPU per job
        (bench/pipeline.py); what a mail reader sees is the same."""
        to = _address(message.recipient)
        encoding, body = _body(message.body)
        headers = [
            self._from_header,
            to.header,
            _header("Subject", message.subject),
            f"Message-ID: {message_id(message.idempotency_key, self._from)}",
            f"Date: {formatdate(localtime=False, usegmt=True)}",
            "MIME-Version: 1.0",
            'Content-Type: text/plain; charset="utf-8"',
            f"Content-Transfer-Encoding: {encoding}",
            _header("Content-Language", message.language),
            _header(IDEMPOTENCY_HEADER, message.idempotency_key),
        ]
        head = (CRLF.join(headers) + CRLF + CRLF).encode("utf-8" if to.utf8 else "ascii")
        return to, head + body

    def send(self, message: Message) -> None:
        try:
            recipient, email = self.build(message)
        except UnicodeError:  # a header or address no encoding here can carry
            raise PermanentDeliveryError("unsendable header: cannot be encoded") from None
        # Errors are re-raised ``from None``: smtplib's messages echo the recipient's address.
        try:
            with self._lock:
                self._send(recipient, email)
        except smtplib.SMTPRecipientsRefused as exc:  # one recipient per message
            code = min(code for code, _ in exc.recipients.values())
            raise _classify(code, "recipient refused") from None
        except smtplib.SMTPResponseException as exc:
            raise _classify(exc.smtp_code, type(exc).__name__) from None
        except smtplib.SMTPNotSupportedError:
            raise PermanentDeliveryError("the server does not support STARTTLS, AUTH or SMTPUTF8") from None
        except OSError as exc:  # refused, reset, timed out, disconnected (SMTPException is an OSError)
            raise TransientDeliveryError(f"SMTP connection failed: {type(exc).__name__}") from None
        log.info("notification.sent", channel="email", delivery_id=message.idempotency_key)

    def close(self) -> None:
        with self._lock:
            self._drop(polite=True)

    def _send(self, recipient: Recipient, email: bytes) -> None:
        # SMTPUTF8 only where the address needs it; smtplib refuses it (SMTPNotSupportedError)
        # before MAIL FROM when the server does not offer it.
        options = ["SMTPUTF8"] if recipient.utf8 else []
        for first_try in (True, False):
            reused = self._reusable()
            smtp = self._smtp if reused and self._smtp is not None else self._connect()
            try:
                if options:
                    smtp.ehlo_or_helo_if_needed()
                    if not smtp.has_extn("smtputf8"):  # smtplib drops the option on a HELO server
                        raise smtplib.SMTPNotSupportedError("SMTPUTF8 not supported by server")
                smtp.sendmail(self._envelope_from, [recipient.envelope], email, mail_options=options)
                smtp.command_encoding = "ascii"  # smtplib leaves it utf-8 after an SMTPUTF8 send
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
