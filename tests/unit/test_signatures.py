"""Webhook signatures: HMAC-SHA256 over timestamp and body, fresh within a window, compared safely."""

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


def test_the_signature_is_the_v1_hex_hmac_of_timestamp_dot_body() -> None:
    # A fixed vector: the other office's implementation must produce the same string.
    expected = "v1=f4543f604646c1d4b471b49edfdb811375377eaf3c690f79ecbf6319db012e4c"
    assert sign(SECRET, TIMESTAMP, BODY) == expected
    assert sign(SECRET.encode(), TIMESTAMP, BODY) == expected


@pytest.mark.parametrize("delay", [timedelta(0), timedelta(seconds=299), timedelta(seconds=-299)])
def test_an_authentic_request_within_the_window_verifies(delay: timedelta) -> None:
    verify_signature(SECRET, TIMESTAMP, BODY, sign(SECRET, TIMESTAMP, BODY), SENT_AT + delay)


@pytest.mark.parametrize(
    ("secret", "timestamp", "body"),
    [
        pytest.param(SECRET, TIMESTAMP, b'{"case_id":"c-2"}', id="tampered body"),
        pytest.param(SECRET, "1764320401", BODY, id="timestamp changed after signing"),
        pytest.param("another-secret", TIMESTAMP, BODY, id="wrong secret"),
    ],
)
def test_a_changed_body_timestamp_or_secret_fails(secret: str, timestamp: str, body: bytes) -> None:
    signature = sign(SECRET, TIMESTAMP, BODY)
    with pytest.raises(SignatureMismatch):
        verify_signature(secret, timestamp, body, signature, SENT_AT)


@pytest.mark.parametrize("delay", [timedelta(seconds=301), timedelta(seconds=-301), timedelta(days=2)])
def test_a_stale_or_future_timestamp_fails_even_with_a_valid_signature(delay: timedelta) -> None:
    with pytest.raises(StaleSignature):
        verify_signature(SECRET, TIMESTAMP, BODY, sign(SECRET, TIMESTAMP, BODY), SENT_AT + delay)


def test_the_window_is_configurable() -> None:
    signature = sign(SECRET, TIMESTAMP, BODY)
    verify_signature(SECRET, TIMESTAMP, BODY, signature, SENT_AT + timedelta(seconds=50), window_seconds=60)
    with pytest.raises(StaleSignature):
        verify_signature(
            SECRET, TIMESTAMP, BODY, signature, SENT_AT + timedelta(seconds=61), window_seconds=60
        )


@pytest.mark.parametrize(
    ("timestamp", "signature"),
    [
        pytest.param("yesterday", "v1=00", id="timestamp not a number"),
        pytest.param("-1764320400", "v1=00", id="negative timestamp"),
        pytest.param("1764320400.5", "v1=00", id="fractional timestamp"),
        pytest.param("١٧٦٤٣٢٠٤٠٠", "v1=00", id="non-ASCII digits"),
        pytest.param(TIMESTAMP, "sha256=00", id="unknown scheme"),
        pytest.param(TIMESTAMP, "", id="empty signature"),
    ],
)
def test_a_malformed_timestamp_or_signature_is_refused(timestamp: str, signature: str) -> None:
    with pytest.raises(MalformedSignature):
        verify_signature(SECRET, timestamp, BODY, signature, SENT_AT)


def test_a_non_ascii_signature_is_a_mismatch_not_a_crash() -> None:
    with pytest.raises(SignatureMismatch):
        verify_signature(SECRET, TIMESTAMP, BODY, "v1=ключ", SENT_AT)


def test_the_idempotency_key_is_the_event_id_and_the_effect_name() -> None:
    key = idempotency_key("0b6f-event", "deliver_handover:handover_package:destination")
    assert key == idempotency_key("0b6f-event", "deliver_handover:handover_package:destination")
    assert key.startswith("0b6f-event") and key.endswith("deliver_handover:handover_package:destination")
    assert key != idempotency_key("0b6f-event", "notify_office:handover_escalated:origin")
