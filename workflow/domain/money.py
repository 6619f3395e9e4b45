"""Money: a Decimal amount with an ISO 4217 currency, never a float."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

# Minor-unit exponents of the currencies the programme pays in. Storage keeps
# integer minor units, so sums and database CHECKs are exact on every backend.
CURRENCY_EXPONENTS: dict[str, int] = {
    "EUR": 2,
    "UAH": 2,
    "USD": 2,
    "GBP": 2,
    "GEL": 2,
    "MDL": 2,
    "AZN": 2,
    "AMD": 2,
    "KZT": 2,
    "JPY": 0,
}
# Minor units are stored as signed 64-bit integers (BIGINT, SQLite's INTEGER).
MAX_MINOR = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Money:
    amount: Decimal
    currency: str

    def __post_init__(self) -> None:
        if self.currency not in CURRENCY_EXPONENTS:
            raise ValueError("unsupported currency (ISO 4217 code of a programme currency expected)")
        if not isinstance(self.amount, Decimal) or not self.amount.is_finite():
            raise ValueError("amount must be a finite Decimal")
        exponent = CURRENCY_EXPONENTS[self.currency]
        try:
            exact = self.amount == self.amount.quantize(Decimal(1).scaleb(-exponent))
        except InvalidOperation:  # more digits than the decimal context holds
            raise ValueError("amount is out of range") from None
        if not exact:
            raise ValueError(f"{self.currency} amounts have at most {exponent} decimal places")

    @classmethod
    def from_minor(cls, minor: int, currency: str) -> Money:
        return cls(Decimal(minor).scaleb(-CURRENCY_EXPONENTS[currency]), currency)

    def check_storable(self) -> None:
        """Raises ValueError unless the amount's minor units fit the columns that store them.
        Checked on what callers send, not in ``__post_init__``: sums may exceed one column."""
        if abs(self.amount.scaleb(CURRENCY_EXPONENTS[self.currency])) > MAX_MINOR:
            raise ValueError("amount is out of range")

    def to_minor(self) -> int:
        return int(self.amount.scaleb(CURRENCY_EXPONENTS[self.currency]))

    def __str__(self) -> str:
        return f"{self.amount:.{CURRENCY_EXPONENTS[self.currency]}f} {self.currency}"
