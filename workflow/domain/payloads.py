"""Payload shapes of the triggers, as plain dataclasses validated at the service edge.

Fields marked ``personal`` never reach history, events or logs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields, is_dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Any, Literal

from workflow.domain.money import Money

# Unknown keys are refused: state, amounts and offices change only through
# the fields a trigger names. Read by pydantic's TypeAdapter in the service
# layer; a plain dict here keeps the domain free of third-party imports.
_STRICT: dict[str, Any] = {"extra": "forbid", "str_strip_whitespace": True}


def free_text(default: Any = dataclasses.MISSING, max_length: int = 2000) -> Any:
    """Typed by staff, so it may name people: kept in its own column, never copied into history
    payloads or events."""
    return field(default=default, metadata={"personal": True, "max_length": max_length})


# Column widths of strings that are not 200 characters (the service layer's default).
OFFICE_LENGTH = 32  # offices.code
ID_LENGTH = 36  # a UUID in text form, as every id column holds


def personal() -> Any:
    return field(metadata={"personal": True})


def personal_default(default: Any) -> Any:
    return field(default=default, metadata={"personal": True})


def personal_or_none(max_length: int = 200) -> Any:
    return field(default=None, metadata={"personal": True, "max_length": max_length})


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _require_money(amount: Decimal, currency: str) -> None:
    # Raises ValueError on an unknown currency, too many decimals, or more than storage holds.
    Money(amount, currency).check_storable()


Relationship = Literal["principal", "spouse", "partner", "child", "parent", "sibling", "other"]
Channel = Literal["walk_in", "phone", "referral", "email"]
Language = Literal["en", "et", "uk", "ru"]
Category = Literal["business", "education", "housing", "medical", "vocational_training", "other"]


@dataclass(frozen=True)
class NoPayload:
    __pydantic_config__ = _STRICT


@dataclass(frozen=True)
class Reason:
    __pydantic_config__ = _STRICT
    reason: str = free_text()

    def __post_init__(self) -> None:
        _require(bool(self.reason), "a reason is required")


@dataclass(frozen=True)
class MemberIn:
    __pydantic_config__ = _STRICT
    full_name: str = personal()
    date_of_birth: date = personal()  # noqa: RUF009
    relationship: Relationship = "other"
    phone: str | None = personal_or_none(max_length=40)
    email: str | None = personal_or_none(max_length=254)

    def __post_init__(self) -> None:
        _require(bool(self.full_name), "full_name must not be empty")
        _require(self.date_of_birth <= date.today(), "date_of_birth is in the future")


@dataclass(frozen=True)
class RegisterInquiry:
    __pydantic_config__ = _STRICT
    origin_office: str = field(metadata={"max_length": OFFICE_LENGTH})
    destination_office: str = field(metadata={"max_length": OFFICE_LENGTH})
    members: list[MemberIn]
    language: Language = "en"
    channel: Channel = "walk_in"

    def __post_init__(self) -> None:
        principals = [m for m in self.members if m.relationship == "principal"]
        _require(len(principals) == 1, "exactly one member must be the principal applicant")
        _require(self.origin_office != self.destination_office, "origin and destination must differ")


@dataclass(frozen=True)
class HandedOverMember(MemberIn):
    # The origin deployment's member id: plans and their approval name members on both sides.
    id: str = field(default="", metadata={"max_length": ID_LENGTH})

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(bool(self.id), "a handed-over member keeps the origin's member id")


@dataclass(frozen=True)
class ReceiveHandover:
    """A case another deployment hands over: what its package carries, never legal status."""

    __pydantic_config__ = _STRICT
    origin_office: str = field(metadata={"max_length": OFFICE_LENGTH})
    destination_office: str = field(metadata={"max_length": OFFICE_LENGTH})
    members: list[HandedOverMember]
    language: Language = "en"
    departure_on: date | None = None
    route: str | None = field(default=None, metadata={"max_length": 64})
    arrived_on: date | None = None

    def __post_init__(self) -> None:
        principals = [m for m in self.members if m.relationship == "principal"]
        _require(len(principals) == 1, "exactly one member must be the principal applicant")
        _require(self.origin_office != self.destination_office, "origin and destination must differ")
        _require(len({m.id for m in self.members}) == len(self.members), "member ids must be distinct")


@dataclass(frozen=True)
class RedirectHandover:
    __pydantic_config__ = _STRICT
    destination_office: str = field(metadata={"max_length": OFFICE_LENGTH})
    reason: str = free_text()

    def __post_init__(self) -> None:
        _require(bool(self.reason), "a reason is required")


@dataclass(frozen=True)
class RecordEligibility:
    __pydantic_config__ = _STRICT
    nationality: str = personal()
    # Legal status: kept on the case for the guards, never in history payloads.
    expulsion_order: bool = personal_default(False)
    consent_signed_on: date | None = None
    travel_document: Literal["present", "requested", "missing"] = "missing"
    asylum_status: Literal["none", "pending", "withdrawn", "closed"] = personal_default("none")
    return_chosen_while_pending: bool = personal_default(False)  # says the claim is pending

    def __post_init__(self) -> None:
        _require(len(self.nationality) == 2 and self.nationality.isalpha(), "nationality is ISO alpha-2")
        # Signed today at the latest, wherever the office is (a day ahead of this server at most),
        # as date_of_birth: a consent dated ahead is a typing error, not a consent.
        _require(
            self.consent_signed_on is None or self.consent_signed_on <= date.today() + timedelta(days=1),
            "consent_signed_on is in the future",
        )


@dataclass(frozen=True)
class RecordTravelDocuments:
    __pydantic_config__ = _STRICT
    document_kind: Literal["passport", "travel_certificate", "laissez_passer"]


@dataclass(frozen=True)
class BookTravel:
    __pydantic_config__ = _STRICT
    departure_on: date
    route: str = field(metadata={"max_length": 64})  # airport codes, e.g. TLL-WAW-KRK
    carrier: str = field(metadata={"max_length": 64})


@dataclass(frozen=True)
class ConfirmArrival:
    __pydantic_config__ = _STRICT
    arrived_on: date


@dataclass(frozen=True)
class BudgetLineIn:
    __pydantic_config__ = _STRICT
    member_id: str = field(metadata={"max_length": ID_LENGTH})
    category: Category
    amount: Decimal
    purpose: str = free_text("", max_length=200)

    def __post_init__(self) -> None:
        _require(self.amount > 0, "a budget amount must be positive")


@dataclass(frozen=True)
class DraftPlan:
    __pydantic_config__ = _STRICT
    currency: str
    lines: list[BudgetLineIn]

    def __post_init__(self) -> None:
        _require(bool(self.lines), "a plan needs at least one budget line")
        for line in self.lines:
            _require_money(line.amount, self.currency)
        keys = [(line.member_id, line.category) for line in self.lines]
        _require(len(keys) == len(set(keys)), "one budget line per member and category")


@dataclass(frozen=True)
class RequestDisbursement:
    """One tranche to a supplier (or, where the programme allows, cash), to be approved by
    another finance officer before any money moves."""

    __pydantic_config__ = _STRICT
    budget_line_id: str = field(metadata={"max_length": ID_LENGTH})
    amount: Decimal
    currency: str
    vendor: str
    kind: Literal["in_kind", "cash"] = "in_kind"

    def __post_init__(self) -> None:
        _require(self.amount > 0, "a disbursement must be positive")
        _require_money(self.amount, self.currency)
        _require(bool(self.vendor.strip()), "a tranche names its vendor")  # DOMAIN.md: each tranche


@dataclass(frozen=True)
class ApproveDisbursement:
    __pydantic_config__ = _STRICT
    disbursement_id: str = field(metadata={"max_length": ID_LENGTH})


@dataclass(frozen=True)
class RejectDisbursement:
    __pydantic_config__ = _STRICT
    disbursement_id: str = field(metadata={"max_length": ID_LENGTH})
    reason: str = free_text()

    def __post_init__(self) -> None:
        _require(bool(self.reason), "a reason is required")


@dataclass(frozen=True)
class RecordReceipt:
    __pydantic_config__ = _STRICT
    disbursement_id: str = field(metadata={"max_length": ID_LENGTH})
    receipt_ref: str = field(metadata={"max_length": 120})

    def __post_init__(self) -> None:
        _require(bool(self.receipt_ref), "a receipt reference is required")


@dataclass(frozen=True)
class GrantDisbursed:
    """Not sent by anyone: what history records of an approval, so that the family's notice
    (and any reader of the history) finds the line, amount and currency without a join."""

    disbursement_id: str
    budget_line_id: str
    amount: Decimal
    currency: str


@dataclass(frozen=True)
class RecordContribution:
    __pydantic_config__ = _STRICT
    amount: Decimal
    currency: str
    purpose: str = free_text(max_length=200)

    def __post_init__(self) -> None:
        _require(self.amount > 0, "a contribution must be positive")
        _require_money(self.amount, self.currency)


@dataclass(frozen=True)
class RecordMonitoringVisit:
    __pydantic_config__ = _STRICT
    visited_on: date
    kind: Literal["home_visit", "office_visit", "phone"]
    plan_on_track: bool
    notes: str | None = personal_or_none()


@dataclass(frozen=True)
class Close:
    __pydantic_config__ = _STRICT
    outcome: Literal["reintegrated", "partially_reintegrated", "not_reintegrated", "lost_contact"]
    reason: str = free_text("")


def public_view(payload: object) -> dict[str, Any]:
    """The payload as JSON-ready data without its personal fields, for history and events."""
    return {
        f.name: _public_value(getattr(payload, f.name))
        for f in fields(payload)  # type: ignore[arg-type]
        if not f.metadata.get("personal")
    }


def _public_value(value: object) -> object:
    if is_dataclass(value):
        return public_view(value)
    if isinstance(value, list):
        return [_public_value(v) for v in value]
    if isinstance(value, Decimal | date):
        return str(value)
    return value
