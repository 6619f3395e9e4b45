"""Webhook signatures: HMAC-SHA256 over timestamp, idempotency key and body, fresh within a window,
compared safely."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from workflow.adapters.channels.webhook import (
    MalformedSignature,
    SignatureMismatch,
    StaleSignature,
    sign,
    verify_signature,
)
from workflow.service_layer.notifications import idempotency_key

SECRET = "whsec-test"
BODY = b'{"case_id":"c-1"}'
SENT_AT = datetime(2025, 11, 28, 9, 0, tzinfo=UTC)
TIMESTAMP = "1764320400"  # SENT_AT in Unix seconds
KEY = "delivery-1"


def test_the_signature_is_the_v2_hex_hmac_of_timestamp_key_and_body_on_lines() -> None:
    # A fixed vector (HMAC-SHA256 of b"1764320400\\ndelivery-1\\n" + BODY): the other office's
    # implementation must produce the same string.
    expected = "v2=88fcbcbec38a60ac9261048d1b330dc3bef473fc87f789a43f4c5b35e8277279"
    assert sign(SECRET, TIMESTAMP, BODY, KEY) == expected
    assert sign(SECRET.encode(), TIMESTAMP, BODY, KEY) == expected


@pytest.mark.parametrize("delay", [timedelta(0), timedelta(seconds=299), timedelta(seconds=-299)])
def test_an_authentic_request_within_the_window_verifies(delay: timedelta) -> None:
    verify_signature(SECRET, TIMESTAMP, BODY, sign(SECRET, TIMESTAMP, BODY, KEY), SENT_AT + delay, key=KEY)


@pytest.mark.parametrize(
    ("secret", "timestamp", "body", "key"),
    [
        pytest.param(SECRET, TIMESTAMP, b'{"case_id":"c-2"}', KEY, id="tampered body"),
        pytest.param(SECRET, "1764320401", BODY, KEY, id="timestamp changed after signing"),
        pytest.param(SECRET, TIMESTAMP, BODY, "delivery-2", id="sent again as another delivery"),
        pytest.param("another-secret", TIMESTAMP, BODY, KEY, id="wrong secret"),
    ],
)
def test_a_changed_body_timestamp_key_or_secret_fails(
    secret: str, timestamp: str, body: bytes, key: str
) -> None:
    signature = sign(SECRET, TIMESTAMP, BODY, KEY)
    with pytest.raises(SignatureMismatch):
        verify_signature(secret, timestamp, body, signature, SENT_AT, key=key)


@pytest.mark.parametrize("delay", [timedelta(seconds=301), timedelta(seconds=-301), timedelta(days=2)])
def test_a_stale_or_future_timestamp_fails_even_with_a_valid_signature(delay: timedelta) -> None:
    with pytest.raises(StaleSignature):
        verify_signature(
            SECRET, TIMESTAMP, BODY, sign(SECRET, TIMESTAMP, BODY, KEY), SENT_AT + delay, key=KEY
        )


def test_the_window_is_configurable() -> None:
    signature = sign(SECRET, TIMESTAMP, BODY, KEY)
    verify_signature(
        SECRET, TIMESTAMP, BODY, signature, SENT_AT + timedelta(seconds=50), window_seconds=60, key=KEY
    )
    with pytest.raises(StaleSignature):
        verify_signature(
            SECRET, TIMESTAMP, BODY, signature, SENT_AT + timedelta(seconds=61), window_seconds=60, key=KEY
        )


@pytest.mark.parametrize(
    ("timestamp", "signature"),
    [
        pytest.param("yesterday", "v2=00", id="timestamp not a number"),
        pytest.param("-1764320400", "v2=00", id="negative timestamp"),
        pytest.param("1764320400.5", "v2=00", id="fractional timestamp"),
        pytest.param("١٧٦٤٣٢٠٤٠٠", "v2=00", id="non-ASCII digits"),
        pytest.param(TIMESTAMP, "sha256=00", id="unknown scheme"),
        pytest.param(TIMESTAMP, "v1=" + "0" * 64, id="v1, which did not sign the key"),
        pytest.param(TIMESTAMP, "", id="empty signature"),
    ],
)
def test_a_malformed_timestamp_or_signature_is_refused(timestamp: str, signature: str) -> None:
    with pytest.raises(MalformedSignature):
        verify_signature(SECRET, timestamp, BODY, signature, SENT_AT, key=KEY)


def test_a_non_ascii_signature_is_a_mismatch_not_a_crash() -> None:
    with pytest.raises(SignatureMismatch):
        verify_signature(SECRET, TIMESTAMP, BODY, "v2=ключ", SENT_AT, key=KEY)


def test_a_key_with_a_line_break_is_refused() -> None:
    with pytest.raises(MalformedSignature):
        verify_signature(SECRET, TIMESTAMP, BODY, sign(SECRET, TIMESTAMP, BODY, "a\nb"), SENT_AT, key="a\nb")


def test_the_idempotency_key_is_the_event_id_and_the_effect_name() -> None:
    key = idempotency_key("0b6f-event", "deliver_handover:handover_package:destination")
    assert key == idempotency_key("0b6f-event", "deliver_handover:handover_package:destination")
    assert key.startswith("0b6f-event") and key.endswith("deliver_handover:handover_package:destination")
    assert key != idempotency_key("0b6f-event", "notify_office:handover_escalated:origin")
