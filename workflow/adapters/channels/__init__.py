"""Notification channels (SMTP, SMS gateways, signed webhooks) and the HTTP POST they share."""

from __future__ import annotations

import http.client
from collections.abc import Mapping
from urllib.parse import urlsplit

from workflow.service_layer.notifications import PermanentDeliveryError, TransientDeliveryError

# The receiver may be slow or overloaded: asking again later can succeed.
RETRYABLE_STATUSES = frozenset({408, 425, 429})
_MAX_RESPONSE_BYTES = 64 * 1024


def post_json(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    timeout: float,
    retryable: frozenset[int] = RETRYABLE_STATUSES,
) -> int:
    """POST ``body`` as JSON; return the 2xx status or raise the matching ``DeliveryError``
    (transient for a status in ``retryable`` or 5xx, else permanent).

    Redirects are not followed: a moved endpoint is a configuration error, and following it
    would send a signed body to a host nobody configured."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PermanentDeliveryError(f"not an http(s) URL: scheme {parts.scheme!r}")
    connection_type = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = connection_type(parts.hostname, parts.port, timeout=timeout)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    sent = {"Content-Type": "application/json", "User-Agent": "avrr-workflow", **headers}
    try:
        connection.request("POST", path, body=body, headers=sent)
        response = connection.getresponse()
        response.read(_MAX_RESPONSE_BYTES)
        status, retry_after = response.status, response.getheader("Retry-After")
    except ValueError as exc:  # a header that cannot be sent (a newline, a non-Latin-1 character)
        raise PermanentDeliveryError(f"HTTP request refused locally: {type(exc).__name__}") from exc
    except (OSError, http.client.HTTPException) as exc:
        raise TransientDeliveryError(f"HTTP POST failed: {type(exc).__name__}") from exc
    finally:
        connection.close()
    if 200 <= status < 300:
        return status
    detail = f"HTTP POST answered {status}"
    if status in retryable or status >= 500:
        raise TransientDeliveryError(detail, retry_after=_seconds(retry_after))
    raise PermanentDeliveryError(detail)


def _seconds(retry_after: str | None) -> float | None:
    """Retry-After in seconds; the HTTP-date form is rare from APIs and is ignored."""
    seconds = (retry_after or "").strip()
    # ASCII digits only: str.isdigit() also takes "²", which float() refuses.
    if not seconds or not seconds.isascii() or not seconds.isdigit():
        return None
    return float(seconds)
