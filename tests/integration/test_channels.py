"""The notification channels against real components: an SMTP server, processes, HTTP receivers."""

from __future__ import annotations

import json
import multiprocessing
import socket
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from tests import servers
from tests.servers import Inbox, Receiver, free_port, http_receiver
from tests.support import FixedClock
from workflow.adapters.channels import smtp as smtp_module
from workflow.adapters.channels.sms import FileSinkSms, HttpSmsGateway
from workflow.adapters.channels.smtp import SmtpChannel, message_id
from workflow.adapters.channels.webhook import (
    SignatureMismatch,
    StaleSignature,
    WebhookChannel,
    verify_signature,
)
from workflow.adapters.templates import render
from workflow.service_layer.notifications import (
    EMAIL,
    SMS,
    WEBHOOK,
    Message,
    PermanentDeliveryError,
    TransientDeliveryError,
    idempotency_key,
)

FROM = "AVRR Tallinn <noreply@avrr.example.org>"
SECRET = "shared-webhook-secret-of-enough-length"


def message(channel: str, recipient: str, key: str = "evt-1/notify_family:travel_booked:origin") -> Message:
    context = {"case_ref": "C-7F3A", "departure_on": "2026-12-03", "route": "TLL-WAW-KBP"}
    subject, body = render("family.travel_booked", "uk", context)
    return Message(recipient, channel, subject, body, "uk", key)


# --- e-mail over a real SMTP server ------------------------------------------------------------


@pytest.fixture(scope="module")
def smtp_server() -> Iterator[tuple[Controller, Inbox]]:
    with servers.smtp_server() as running:
        yield running


@pytest.fixture
def smtp(smtp_server: tuple[Controller, Inbox]) -> tuple[SmtpChannel, Inbox]:
    controller, inbox = smtp_server
    inbox.envelopes.clear()
    inbox.rcpt_reply = None
    return SmtpChannel("127.0.0.1", controller.port, FROM, timeout=5), inbox


def test_an_email_arrives_with_its_subject_body_and_a_message_id_from_the_key(
    smtp: tuple[SmtpChannel, Inbox],
) -> None:
    channel, inbox = smtp
    sent = message(EMAIL, "family@example.org")
    channel.send(sent)
    [received] = inbox.received()
    assert received["Subject"] == sent.subject
    assert received.get_content().strip() == sent.body
    assert received["To"] == "family@example.org"
    assert received["Message-ID"] == message_id(sent.idempotency_key, FROM)
    assert received["Message-ID"].endswith("@avrr.example.org>")
    assert received["X-AVRR-Idempotency-Key"] == sent.idempotency_key
    assert received["Content-Language"] == "uk"
    assert inbox.envelopes[0].rcpt_tos == ["family@example.org"]


def test_text_in_any_language_arrives_as_written_and_ascii_goes_plain(
    smtp: tuple[SmtpChannel, Inbox], smtp_server: tuple[Controller, Inbox]
) -> None:
    channel, inbox = smtp
    subject = "Reisi kinnitus / Підтвердження поїздки / Подтверждение поездки " * 2
    body = "Tere!\nÜks rida.\nЩе один рядок.\n"  # noqa: RUF001
    sent = Message("family@example.org", EMAIL, subject, body, "et", "k/1")
    plain = Message("family@example.org", EMAIL, "Plain", "Line one.\nLine two.\n", "en", "k/2")
    named = "Таллінн AVRR <noreply@avrr.example.org>"
    SmtpChannel("127.0.0.1", smtp_server[0].port, named).send(sent)
    channel.send(plain)
    received, ascii_only = inbox.received()
    assert received["Subject"] == subject
    (sender,) = received["From"].addresses
    assert (sender.display_name, sender.addr_spec) == ("Таллінн AVRR", "noreply@avrr.example.org")
    assert received.get_content() == body.replace("\n", "\r\n")
    assert inbox.envelopes[0].mail_from == "noreply@avrr.example.org"
    assert ascii_only["Content-Transfer-Encoding"] == "7bit"
    assert ascii_only.get_content().replace("\r\n", "\n") == plain.body
    # Every line on the wire is short enough for any server (RFC 5322: 78 recommended, 998 at most).
    assert max(len(line) for line in inbox.envelopes[0].content.splitlines()) <= 78


def test_a_named_recipient_keeps_its_name_and_a_long_ascii_subject_is_folded(
    smtp: tuple[SmtpChannel, Inbox],
) -> None:
    channel, inbox = smtp
    subject = "Your return travel is booked for the whole family " * 4
    channel.send(Message("Mykola Family <family@example.org>", EMAIL, subject, "a\x0bb\nc\n", "en", "k/4"))
    (received,) = inbox.received()
    (to,) = received["To"].addresses
    assert (to.display_name, to.addr_spec) == ("Mykola Family", "family@example.org")
    assert inbox.envelopes[0].rcpt_tos == ["family@example.org"]
    assert received["Subject"] == subject
    assert max(len(line) for line in inbox.envelopes[0].content.splitlines()) <= 78
    # Only CR and LF end a line: a vertical tab is text, not a line break.
    assert received.get_content().replace("\r\n", "\n") == "a\x0bb\nc\n"


@pytest.mark.parametrize(
    ("recipient", "subject"),
    [
        ("family@example.org", "Hello\r\nBcc: someone@example.org"),
        ("family@example.org, other@example.org", "Hello"),
        ("Family <family@example.org>\nBcc: x@example.org", "Hello"),
        ("not an address", "Hello"),
    ],
)
def test_a_header_that_would_smuggle_a_line_or_a_second_address_is_refused_for_good(
    smtp: tuple[SmtpChannel, Inbox], recipient: str, subject: str
) -> None:
    channel, inbox = smtp
    with pytest.raises(PermanentDeliveryError, match="unsendable header"):
        channel.send(Message(recipient, EMAIL, subject, "body", "en", "k/3"))
    assert inbox.envelopes == []


def test_an_address_in_another_script_goes_by_idna_or_smtputf8_where_the_server_takes_it(
    smtp: tuple[SmtpChannel, Inbox],
) -> None:
    """A Cyrillic domain goes as its ASCII form (IDNA) to any server; a Cyrillic local part goes
    with SMTPUTF8, which this server offers, and the To line keeps the address as written."""
    channel, inbox = smtp
    channel.send(message(EMAIL, "Olena <olena@приклад.укр>", key="evt-1/a"))
    channel.send(message(EMAIL, "олена@приклад.укр", key="evt-1/b"))
    channel.send(message(EMAIL, "Олена Коваль <олена@приклад.укр>", key="evt-1/c"))
    channel.send(message(EMAIL, "hans@faß.de", key="evt-1/d"))  # IDNA 2008: ß stays itself
    assert [e.rcpt_tos for e in inbox.envelopes] == [
        ["olena@xn--80aikifvh.xn--j1amh"],
        ["олена@xn--80aikifvh.xn--j1amh"],
        ["олена@xn--80aikifvh.xn--j1amh"],
        ["hans@xn--fa-hia.de"],
    ]
    first, second, third, _ = inbox.received()
    assert first["To"] == "Olena <olena@xn--80aikifvh.xn--j1amh>"
    assert second["To"] == "олена@xn--80aikifvh.xn--j1amh"
    assert third["To"] == "Олена Коваль <олена@xn--80aikifvh.xn--j1amh>"
    assert [e.smtp_utf8 for e in inbox.envelopes] == [False, True, True, False]


def test_a_local_part_in_another_script_is_refused_for_good_by_a_server_without_smtputf8() -> None:
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port(), enable_SMTPUTF8=False)
    controller.start()
    try:
        channel = SmtpChannel("127.0.0.1", controller.port, FROM, timeout=5)
        with pytest.raises(PermanentDeliveryError, match="SMTPUTF8"):
            channel.send(message(EMAIL, "олена@example.org"))
        channel.send(message(EMAIL, "olena@example.org"))  # the next message still goes
        assert [e.rcpt_tos for e in inbox.envelopes] == [["olena@example.org"]]
    finally:
        controller.stop()


class _HeloOnly(SMTP):  # type: ignore[misc]
    """A server from before ESMTP: EHLO is not a command it knows, so clients fall back to HELO."""

    async def smtp_EHLO(self, hostname: str) -> None:
        await self.push("502 5.5.1 EHLO not implemented")


class _HeloOnlyController(Controller):  # type: ignore[misc]
    def factory(self) -> SMTP:
        return _HeloOnly(self.handler, **self.SMTP_kwargs)


def test_a_local_part_in_another_script_is_refused_for_good_by_a_server_that_knows_only_helo() -> None:
    """smtplib would drop the SMTPUTF8 option after HELO and send the UTF-8 address anyway."""
    inbox = Inbox()
    controller = _HeloOnlyController(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        channel = SmtpChannel("127.0.0.1", controller.port, FROM, timeout=5)
        with pytest.raises(PermanentDeliveryError, match="SMTPUTF8"):
            channel.send(message(EMAIL, "олена@example.org"))
        channel.send(message(EMAIL, "olena@приклад.укр"))  # an IDNA domain needs no extension
        channel.send(message(EMAIL, "olena@example.org"))
        sent = [e.rcpt_tos for e in inbox.envelopes]
        assert sent == [["olena@xn--80aikifvh.xn--j1amh"], ["olena@example.org"]]
        assert not any(e.smtp_utf8 for e in inbox.envelopes)
    finally:
        controller.stop()


def test_a_resend_carries_the_same_message_id_and_another_event_a_different_one(
    smtp: tuple[SmtpChannel, Inbox],
) -> None:
    channel, inbox = smtp
    channel.send(message(EMAIL, "family@example.org", key="evt-1/x"))
    channel.send(message(EMAIL, "family@example.org", key="evt-1/x"))
    channel.send(message(EMAIL, "family@example.org", key="evt-2/x"))
    first, resend, other = (m["Message-ID"] for m in inbox.received())
    assert first == resend != other


@pytest.mark.parametrize(
    ("reply", "error"),
    [("450 4.2.1 Mailbox busy", TransientDeliveryError), ("550 5.1.1 No such user", PermanentDeliveryError)],
)
def test_a_refused_recipient_maps_4xx_to_transient_and_5xx_to_permanent(
    smtp: tuple[SmtpChannel, Inbox], reply: str, error: type[Exception]
) -> None:
    channel, inbox = smtp
    inbox.rcpt_reply = reply
    with pytest.raises(error) as refused:
        channel.send(message(EMAIL, "family@example.org"))
    assert "family@example.org" not in str(refused.value)
    assert inbox.envelopes == []


def test_starttls_on_a_server_without_it_is_permanent(smtp_server: tuple[Controller, Inbox]) -> None:
    channel = SmtpChannel("127.0.0.1", smtp_server[0].port, FROM, starttls=True, timeout=5)
    with pytest.raises(PermanentDeliveryError):
        channel.send(message(EMAIL, "family@example.org"))


def test_no_server_is_transient() -> None:
    with pytest.raises(TransientDeliveryError):
        SmtpChannel("127.0.0.1", free_port(), FROM, timeout=2).send(message(EMAIL, "family@example.org"))


def test_a_server_that_never_greets_times_out_as_transient() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        channel = SmtpChannel("127.0.0.1", silent.getsockname()[1], FROM, timeout=0.3)
        started = time.monotonic()
        with pytest.raises(TransientDeliveryError):
            channel.send(message(EMAIL, "family@example.org"))
        assert time.monotonic() - started < 3


def test_login_uses_the_credentials_and_a_wrong_password_is_permanent() -> None:
    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"relay", b"right")
        return AuthResult(success=ok, handled=False)

    inbox = Inbox()
    controller = Controller(
        inbox, hostname="127.0.0.1", port=free_port(), authenticator=authenticate, auth_require_tls=False
    )
    controller.start()
    try:
        SmtpChannel("127.0.0.1", controller.port, FROM, "relay", "right").send(
            message(EMAIL, "a@example.org")
        )
        assert len(inbox.envelopes) == 1
        with pytest.raises(PermanentDeliveryError):
            SmtpChannel("127.0.0.1", controller.port, FROM, "relay", "wrong").send(
                message(EMAIL, "a@example.org")
            )
    finally:
        controller.stop()


class Sessions(Inbox):
    """An inbox that also notes which client connection (its peer address) each message came on."""

    def __init__(self) -> None:
        super().__init__()
        self.peers: list[Any] = []
        self.mail_reply: str | None = None  # answered to the next MAIL FROM, once

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if self.mail_reply:
            reply, self.mail_reply = self.mail_reply, None
            return reply
        envelope.mail_from = address
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.peers.append(session.peer)
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture
def sessions() -> Iterator[tuple[Controller, Sessions]]:
    inbox = Sessions()
    # The server drops a client idle for 0.5 s, as real servers do after a minute or more.
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port(), timeout=0.5)
    controller.start()
    try:
        yield controller, inbox
    finally:
        controller.stop()


def test_messages_share_one_connection_until_it_has_carried_its_share(
    sessions: tuple[Controller, Sessions], monkeypatch: pytest.MonkeyPatch
) -> None:
    controller, inbox = sessions
    monkeypatch.setattr(smtp_module, "MESSAGES_PER_CONNECTION", 3)
    channel = SmtpChannel("127.0.0.1", controller.port, FROM, timeout=5)
    for n in range(5):
        channel.send(message(EMAIL, "family@example.org", key=f"evt-{n}/x"))
    channel.close()
    assert len(inbox.envelopes) == 5
    first, second = inbox.peers[0], inbox.peers[3]
    assert inbox.peers == [first] * 3 + [second] * 2 and first != second


def test_a_connection_the_server_dropped_is_replaced_and_the_message_goes_once(
    sessions: tuple[Controller, Sessions],
) -> None:
    controller, inbox = sessions
    channel = SmtpChannel("127.0.0.1", controller.port, FROM, timeout=5)
    channel.send(message(EMAIL, "family@example.org", key="evt-1/x"))
    time.sleep(1.0)  # the server has timed the idle session out and closed it
    channel.send(message(EMAIL, "family@example.org", key="evt-2/x"))
    assert [m["Message-ID"] for m in inbox.received()] == [
        message_id("evt-1/x", FROM),
        message_id("evt-2/x", FROM),
    ]
    assert inbox.peers[0] != inbox.peers[1]


def test_a_kept_connection_answered_421_is_replaced_but_a_new_one_answered_421_is_transient(
    sessions: tuple[Controller, Sessions],
) -> None:
    controller, inbox = sessions
    channel = SmtpChannel("127.0.0.1", controller.port, FROM, timeout=5)
    channel.send(message(EMAIL, "family@example.org", key="evt-1/x"))
    inbox.mail_reply = "421 4.4.2 timeout exceeded"  # what Postfix says to a session it times out
    channel.send(message(EMAIL, "family@example.org", key="evt-2/x"))
    assert len(inbox.envelopes) == 2 and inbox.peers[0] != inbox.peers[1]

    fresh = SmtpChannel("127.0.0.1", controller.port, FROM, timeout=5)
    inbox.mail_reply = "421 4.3.2 shutting down"
    with pytest.raises(TransientDeliveryError):
        fresh.send(message(EMAIL, "family@example.org", key="evt-3/x"))
    assert len(inbox.envelopes) == 2


def test_after_a_refused_recipient_the_connection_carries_the_next_message(
    sessions: tuple[Controller, Sessions],
) -> None:
    controller, inbox = sessions
    channel = SmtpChannel("127.0.0.1", controller.port, FROM, timeout=5)
    inbox.rcpt_reply = "450 4.2.1 Mailbox busy"
    with pytest.raises(TransientDeliveryError):
        channel.send(message(EMAIL, "family@example.org", key="evt-1/x"))
    inbox.rcpt_reply = None
    channel.send(message(EMAIL, "family@example.org", key="evt-1/x"))
    channel.send(message(EMAIL, "family@example.org", key="evt-2/x"))
    assert len(inbox.envelopes) == 2 and inbox.peers[0] == inbox.peers[1]


def test_a_server_gone_for_good_is_transient_on_a_kept_connection_too() -> None:
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    channel = SmtpChannel("127.0.0.1", controller.port, FROM, timeout=2)
    channel.send(message(EMAIL, "family@example.org", key="evt-1/x"))
    controller.stop()
    with pytest.raises(TransientDeliveryError):
        channel.send(message(EMAIL, "family@example.org", key="evt-2/x"))
    assert len(inbox.envelopes) == 1


# --- the SMS file sink, shared by processes ----------------------------------------------------


def sms(key: str) -> Message:
    return Message("+372 5555 0000", SMS, "", f"text for {key}", "et", key)


def _send_from_another_process(path: str, keys: list[str], start: Any) -> None:
    sink = FileSinkSms(Path(path))
    start.wait()
    for key in keys:
        sink.send(sms(key))


def lines_of(path: Path) -> list[dict[str, Any]]:
    """The records of the sink; a torn line (not JSON) is not a record."""
    records = []
    for line in path.read_text("utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def test_two_processes_writing_at_once_lose_nothing_and_never_duplicate_a_key(tmp_path: Path) -> None:
    path = tmp_path / "var" / "sms.jsonl"
    shared = [f"evt-{i}/notify_family:x:origin" for i in range(300)]
    only_a, only_b = [f"a-{i}" for i in range(100)], [f"b-{i}" for i in range(100)]
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(2)
    writers = [
        context.Process(target=_send_from_another_process, args=(str(path), keys, start))
        for keys in (shared + only_a, list(reversed(shared)) + only_b)
    ]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(60)
        assert writer.exitcode == 0
    keys = [line["idempotency_key"] for line in lines_of(path)]
    assert len(keys) == len(set(keys))
    assert set(keys) == set(shared + only_a + only_b)
    assert len(path.read_text("utf-8").splitlines()) == len(keys)  # no torn or merged lines


def test_a_key_already_in_the_sink_is_skipped_even_by_a_restarted_worker(tmp_path: Path) -> None:
    path = tmp_path / "sms.jsonl"
    FileSinkSms(path).send(sms("evt-1/a"))
    restarted = FileSinkSms(path, clock=FixedClock())
    restarted.send(sms("evt-1/a"))
    restarted.send(sms("evt-2/a"))
    restarted.send(sms("evt-2/a"))
    assert [line["idempotency_key"] for line in lines_of(path)] == ["evt-1/a", "evt-2/a"]
    assert lines_of(path)[1]["sent_at"] == FixedClock().now().isoformat()


def test_a_sink_that_cannot_be_written_fails_transiently_and_sends_once_writable(tmp_path: Path) -> None:
    """A disk error (here: the sink's directory is a file) is retried, not dead-lettered at once."""
    blocked = tmp_path / "var"
    blocked.write_text("not a directory")
    sink = FileSinkSms(blocked / "sms.jsonl")
    with pytest.raises(TransientDeliveryError, match="SMS sink not written: "):
        sink.send(sms("evt-1/a"))
    blocked.unlink()
    sink.send(sms("evt-1/a"))
    assert [line["idempotency_key"] for line in lines_of(blocked / "sms.jsonl")] == ["evt-1/a"]


def test_a_line_torn_by_a_dead_writer_neither_counts_as_sent_nor_corrupts_the_next(tmp_path: Path) -> None:
    path = tmp_path / "sms.jsonl"
    FileSinkSms(path).send(sms("evt-1/a"))
    with path.open("a", encoding="utf-8") as torn:
        torn.write('{"idempotency_key": "evt-2/a", "to"')
    FileSinkSms(path).send(sms("evt-2/a"))
    assert [line["idempotency_key"] for line in lines_of(path)] == ["evt-1/a", "evt-2/a"]
    assert len(path.read_text("utf-8").splitlines()) == 3  # the torn line stands apart


# --- webhooks and the HTTP SMS gateway against a real HTTP receiver ----------------------------


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with http_receiver() as running:
        yield running


PACKAGE = json.dumps({"case_id": "c-1", "destination_office": "kyiv", "members": 4})


def handover(url: str) -> Message:
    key = idempotency_key("evt-9", "deliver_handover:handover_package:destination")
    return Message(url, WEBHOOK, "handover_package", PACKAGE, "en", key)


def test_a_webhook_arrives_signed_and_its_signature_verifies(receiver: Receiver) -> None:
    clock = FixedClock()
    WebhookChannel(SECRET, timeout=5, clock=clock).send(handover(receiver.url))
    [got] = receiver.requests
    assert got.path == "/inbound" and json.loads(got.body) == json.loads(PACKAGE)
    assert got.headers["Idempotency-Key"] == "evt-9/deliver_handover:handover_package:destination"
    assert got.headers["X-AVRR-Event"] == "handover_package"
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["X-AVRR-Signature"].startswith("v2=")
    timestamp, signature = got.headers["X-AVRR-Timestamp"], got.headers["X-AVRR-Signature"]
    key = got.headers["Idempotency-Key"]
    verify_signature(SECRET, timestamp, got.body, signature, clock.now() + timedelta(seconds=2), key=key)
    with pytest.raises(SignatureMismatch):
        verify_signature(SECRET, timestamp, got.body.replace(b"c-1", b"c-2"), signature, clock.now(), key=key)
    with pytest.raises(SignatureMismatch):  # sent again as another delivery
        verify_signature(SECRET, timestamp, got.body, signature, clock.now(), key="another-delivery")
    with pytest.raises(StaleSignature):
        verify_signature(SECRET, timestamp, got.body, signature, clock.now() + timedelta(minutes=6), key=key)


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (503, TransientDeliveryError),
        (500, TransientDeliveryError),
        (429, TransientDeliveryError),
        (408, TransientDeliveryError),
        (412, TransientDeliveryError),  # the other deployment's version_conflict: the case moved
        (409, PermanentDeliveryError),  # its transition_not_allowed: the case is not where it can
        (400, PermanentDeliveryError),
        (401, PermanentDeliveryError),
        (404, PermanentDeliveryError),
        (302, PermanentDeliveryError),
    ],
)
def test_webhook_statuses_map_to_transient_or_permanent(
    receiver: Receiver, status: int, error: type[Exception]
) -> None:
    receiver.replies.append((status, {"Location": "http://elsewhere.example/"}, 0.0))
    with pytest.raises(error):
        WebhookChannel(SECRET, timeout=5).send(handover(receiver.url))
    assert len(receiver.requests) == 1  # a redirect is not followed


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("7", 7), (" 12 ", 12), ("\u00b2", None), ("Wed, 21 Oct 2026 07:28:00 GMT", None), ("-3", None)],
)
def test_a_503_with_retry_after_tells_the_caller_how_long_to_wait(
    receiver: Receiver, header: str, seconds: int | None
) -> None:
    """Seconds in ASCII digits only; anything else (a superscript digit, the HTTP-date form) is
    ignored, and the 503 stays transient."""
    receiver.replies.append((503, {"Retry-After": header}, 0.0))
    with pytest.raises(TransientDeliveryError) as busy:
        WebhookChannel(SECRET, timeout=5).send(handover(receiver.url))
    assert busy.value.retry_after == seconds


def test_a_slow_receiver_times_out_as_transient(receiver: Receiver) -> None:
    receiver.replies.append((204, {}, 1.5))
    with pytest.raises(TransientDeliveryError):
        WebhookChannel(SECRET, timeout=0.3).send(handover(receiver.url))


def test_no_receiver_is_transient_and_a_bad_body_or_url_is_permanent(receiver: Receiver) -> None:
    with pytest.raises(TransientDeliveryError):
        WebhookChannel(SECRET, timeout=2).send(handover(f"http://127.0.0.1:{free_port()}/inbound"))
    with pytest.raises(PermanentDeliveryError):
        WebhookChannel(SECRET).send(Message(receiver.url, WEBHOOK, "x", "not json", "en", "k"))
    with pytest.raises(PermanentDeliveryError):
        WebhookChannel(SECRET).send(handover("ftp://127.0.0.1/inbound"))
    assert receiver.requests == []


def test_the_http_sms_gateway_posts_the_message_with_its_idempotency_key(receiver: Receiver) -> None:
    receiver.replies.append((202, {}, 0.0))
    sent = message(SMS, "+380 44 000 0000")
    HttpSmsGateway(receiver.url, token="gw-token", sender="IOM", timeout=5).send(sent)
    [got] = receiver.requests
    assert json.loads(got.body) == {
        "to": "+380 44 000 0000",
        "text": sent.body,
        "language": "uk",
        "reference": sent.idempotency_key,
        "from": "IOM",
    }
    assert got.headers["Idempotency-Key"] == sent.idempotency_key
    assert got.headers["Authorization"] == "Bearer gw-token"


@pytest.mark.parametrize(("status", "error"), [(502, TransientDeliveryError), (422, PermanentDeliveryError)])
def test_the_http_sms_gateway_maps_failures(receiver: Receiver, status: int, error: type[Exception]) -> None:
    receiver.replies.append((status, {}, 0.0))
    with pytest.raises(error):
        HttpSmsGateway(receiver.url, timeout=5).send(message(SMS, "+380 44 000 0000"))
