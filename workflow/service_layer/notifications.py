"""The notification ports: a message, the channel that delivers it, the renderer that words it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

EMAIL, SMS, WEBHOOK = "email", "sms", "webhook"
LANGUAGES = ("en", "et", "uk", "ru")
FALLBACK_LANGUAGE = "en"


def idempotency_key(event_id: str, effect_name: str) -> str:
    """The same event and effect give the same key, so a resend is recognised downstream."""
    return f"{event_id}/{effect_name}"


@dataclass(frozen=True, slots=True)
class Message:
    recipient: str  # an e-mail address, a phone number or a webhook URL, by channel
    channel: str
    subject: str
    body: str  # plain text; for webhooks the JSON document sent as is
    language: str
    idempotency_key: str


class DeliveryError(Exception):
    """A send failed; the message text never holds the recipient or the body."""

    def __init__(self, detail: str, *, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after  # seconds the receiver asked us to wait, if it said


class TransientDeliveryError(DeliveryError):
    """Try again later: the server was down, busy or timed out."""


class PermanentDeliveryError(DeliveryError):
    """Do not retry: the receiver refused this message and will refuse it again."""


class Channel(Protocol):
    def send(self, message: Message) -> None:
        """Deliver once per idempotency key, or raise a ``DeliveryError``."""
        ...


class TemplateError(Exception):
    """A template or its context is wrong: a programming error, never retried."""


class UnknownTemplate(TemplateError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no template named {name!r}")
        self.name = name


class TemplateContextMismatch(TemplateError):
    """The context must hold exactly the declared keys: nothing missing, nothing extra (no leaks)."""

    def __init__(self, name: str, missing: frozenset[str], extra: frozenset[str]) -> None:
        super().__init__(f"template {name!r}: missing {sorted(missing)}, unexpected {sorted(extra)}")
        self.name = name
        self.missing = missing
        self.extra = extra


class Renderer(Protocol):
    def keys(self, template_name: str) -> frozenset[str]:
        """The context keys the template declares (exactly these must be given)."""
        ...

    def render(self, template_name: str, language: str, context: Mapping[str, object]) -> tuple[str, str]:
        """The (subject, body) of a template in ``language``, English when it has no such language."""
        ...
