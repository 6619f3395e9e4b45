"""Signed webhooks: HMAC-SHA256 over timestamp, idempotency key and body, posted over HTTP and
verified on receipt."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from datetime import datetime

import structlog

from workflow.adapters.channels import RETRYABLE_STATUSES, post_json
from workflow.adapters.clock import SystemClock
from workflow.service_layer.notifications import Message, PermanentDeliveryError
from workflow.service_layer.ports import Clock

log = structlog.get_logger(__name__)
# The other deployment's /handover/inbound answers 412 (version_conflict) when the case moved
# under the delivery (a concurrent fire on it): asking again can succeed.
RETRYABLE = RETRYABLE_STATUSES | {412}

TIMESTAMP_HEADER = "X-AVRR-Timestamp"
SIGNATURE_HEADER = "X-AVRR-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
EVENT_HEADER = "X-AVRR-Event"
DEFAULT_WINDOW_SECONDS = 300
_TIMESTAMP = re.compile(r"[0-9]{1,12}")


class SignatureRejected(Exception):
    """The receiver must answer 401 and act on nothing in the request."""


class MalformedSignature(SignatureRejected):
    """The timestamp or the signature header is not in the expected form."""


class StaleSignature(SignatureRejected):
    """The timestamp is outside the window: a replay, or a clock too far off."""


class SignatureMismatch(SignatureRejected):
    """The body or the timestamp was changed, or the secret is not the shared one."""


def _key(secret: bytes | str) -> bytes:
    return secret.encode() if isinstance(secret, str) else secret


def sign(secret: bytes | str, timestamp: str, body: bytes, key: str) -> str:
    """The ``X-AVRR-Signature`` value: ``v2=`` and the hex HMAC-SHA256 of the timestamp, the
    ``Idempotency-Key`` and the body, each ended by a newline but the body (neither a timestamp
    nor a header value holds one, so no two requests sign the same bytes). The key is signed so
    that a captured request cannot be sent again within the window as another delivery."""
    signed = timestamp.encode("ascii") + b"\n" + key.encode("utf-8") + b"\n" + body
    return f"v2={hmac.new(_key(secret), signed, hashlib.sha256).hexdigest()}"


def verify_signature(
    secret: bytes | str,
    timestamp: str,
    body: bytes,
    signature: str,
    now: datetime,
    window_seconds: int = DEFAULT_WINDOW_SECONDS,
    *,
    key: str,
) -> None:
    """Return if the request is authentic and fresh; raise a ``SignatureRejected`` otherwise.
    ``key``: the request's ``Idempotency-Key``, as received."""
    if not _TIMESTAMP.fullmatch(timestamp):
        raise MalformedSignature("the timestamp is not a whole number of Unix seconds")
    if not signature.startswith("v2="):
        raise MalformedSignature("the signature is not a v2 signature")
    if "\n" in key:
        raise MalformedSignature("the idempotency key holds a line break")
    if abs(now.timestamp() - int(timestamp)) > window_seconds:
        raise StaleSignature(f"the timestamp is more than {window_seconds}s away from now")
    expected = sign(secret, timestamp, body, key).encode()
    if not hmac.compare_digest(expected, signature.strip().encode("utf-8", "replace")):
        raise SignatureMismatch("the signature does not match the timestamp, key and body")


class WebhookChannel:
    """Posts ``message.body`` (a JSON document) to ``message.recipient`` (a URL), signed."""

    def __init__(self, secret: bytes | str, timeout: float = 10.0, clock: Clock | None = None) -> None:
        self._secret = _key(secret)
        self._timeout = timeout
        self._clock = clock or SystemClock()

    def send(self, message: Message) -> None:
        body = message.body.encode()
        try:
            json.loads(body)
        except ValueError:
            raise PermanentDeliveryError("the webhook body is not a JSON document") from None
        timestamp = str(int(self._clock.now().timestamp()))
        headers = {
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(self._secret, timestamp, body, message.idempotency_key),
            IDEMPOTENCY_HEADER: message.idempotency_key,
            EVENT_HEADER: message.subject,
        }
        status = post_json(message.recipient, body, headers, self._timeout, RETRYABLE)
        log.info("notification.sent", channel="webhook", delivery_id=message.idempotency_key, status=status)
