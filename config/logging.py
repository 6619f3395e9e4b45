"""structlog set up once, by entry points: console in development, JSON elsewhere, no personal data."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from dataclasses import asdict, is_dataclass
from datetime import date
from decimal import Decimal
from enum import Enum
from typing import Any
from uuid import UUID

import structlog

# Keys whose values are personal data wherever they appear in an event dict.
PERSONAL_KEYS = frozenset(
    {
        "name",
        "full_name",
        "first_name",
        "last_name",
        "date_of_birth",
        "dob",
        "birth_date",
        "phone",
        "phone_number",
        "email",
        "e_mail",
        "document_number",
        "passport_number",
        "passport",
        "passport_id",
        "national_id",
        "personal_code",
        "document_id",
        "address",
        "nationality",
        "notes",
        "members",
    }
)
_PERSONAL_SQUASHED = frozenset(k.replace("_", "") for k in PERSONAL_KEYS)  # fullName, DateOfBirth
REDACTED = "[redacted]"
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+")
# Seven digits and more standing alone: an Estonian mobile number has seven (5123456, 512 3456).
_PHONE = re.compile(r"(?<![\w-])\+?\d[\d ()-]{5,}\d(?![\w-])")
# Dates (ISO and day.month.year): dates of birth look like this, also as the start of an ISO
# timestamp (1987-03-14T00:00:00Z) or glued to a word (dob_1987-03-14).
_DATE = re.compile(
    r"(?<!\d)(19|20)\d\d-[01]\d-[0-3]\d(?:T[\d:.]+(?:Z|[+-]\d\d:?\d\d)?)?(?!\d)"
    r"|(?<!\d)[0-3]?\d[./][01]?\d[./](19|20)\d\d(?!\d)"
)
_DOCUMENT = re.compile(r"\b[A-Z]{1,2}\d{6,9}\b")


def scrub_text(text: str) -> str:
    for pattern in (_EMAIL, _PHONE, _DATE, _DOCUMENT):
        text = pattern.sub(REDACTED, text)
    return text


# The engine's own identifiers: opaque, never personal. Anything else ending in "_id"
# (passport_id, national_id) is scrubbed like any other value.
_SAFE_KEYS = frozenset(
    {
        "timestamp",
        "level",
        "logger",
        "id",
        "case_id",
        "event_id",
        "request_id",
        "actor_id",
        "plan_id",
        "member_id",
        "budget_line_id",
        "disbursement_id",
        "task_id",
        "timer_id",
        "delivery_id",
        "job_id",
    }
)
_PLAIN = (Decimal, date, UUID, Enum)


def _scrub_item(key: str, value: Any) -> Any:
    normal = key.lower().replace("-", "_")
    if normal in _SAFE_KEYS:
        return value
    personal = normal in PERSONAL_KEYS or normal.replace("_", "") in _PERSONAL_SQUASHED
    return REDACTED if personal else _scrub(value)


def _scrub(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, _PLAIN):
        return scrub_text(str(value))
    if isinstance(value, dict):
        return {k: _scrub_item(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_scrub(v) for v in value]
    if is_dataclass(value) and not isinstance(value, type):
        return _scrub(asdict(value))
    # Any other object would be rendered by its repr(), which may carry personal fields.
    return f"<{type(value).__name__}>"


def redact_personal_data(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Last line of defence: code must not log personal data, and this removes what slips through."""
    for key, value in list(event_dict.items()):
        event_dict[key] = _scrub_item(key, value)
    return event_dict


def configure_logging(*, json: bool, level: str = "INFO") -> None:
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact_personal_data,
    ]
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        # Drop events below the level before the chain runs: redaction is not free.
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    # Third-party stdlib log records pass through the same redaction.
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=shared,
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # transitions logs every callback at INFO; alembic narrates each migration step.
    for noisy in ("transitions", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
