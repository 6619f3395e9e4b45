"""Money: exact Decimal amounts in a known currency, stored as integer minor units."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workflow.domain.money import CURRENCY_EXPONENTS, Money

LIMIT = Decimal(10) ** 12  # well beyond any grant, well within Decimal's precision
CURRENCIES = sorted(CURRENCY_EXPONENTS)


@given(amount=st.decimals(min_value=-LIMIT, max_value=LIMIT, places=2, allow_nan=False, allow_infinity=False))
def test_any_two_place_amount_round_trips_through_minor_units(amount):
    money = Money(amount, "EUR")
    minor = money.to_minor()

    assert isinstance(minor, int)
    assert minor == amount * 100
    assert Money.from_minor(minor, "EUR") == money


@given(currency=st.sampled_from(CURRENCIES), minor=st.integers(min_value=-(10**14), max_value=10**14))
def test_any_count_of_minor_units_round_trips_in_every_currency(currency, minor):
    money = Money.from_minor(minor, currency)
    assert money.to_minor() == minor
    assert money.currency == currency
    assert money.amount == Decimal(minor).scaleb(-CURRENCY_EXPONENTS[currency])


@pytest.mark.parametrize(
    ("amount", "currency", "text"),
    [
        ("12.5", "EUR", "12.50 EUR"),
        ("0", "UAH", "0.00 UAH"),
        ("1E+3", "JPY", "1000 JPY"),
        ("-3.10", "USD", "-3.10 USD"),
    ],
)
def test_money_prints_with_the_currencys_decimal_places(amount, currency, text):
    assert str(Money(Decimal(amount), currency)) == text


def test_trailing_zeros_beyond_the_currencys_places_are_the_same_amount():
    assert Money(Decimal("10.000"), "EUR").to_minor() == 1000
    assert Money(Decimal("10.000"), "EUR") == Money(Decimal("10"), "EUR")


@pytest.mark.parametrize(
    ("amount", "currency", "words"),
    [
        (Decimal("1.00"), "XXX", "unsupported currency"),
        (Decimal("1.00"), "eur", "unsupported currency"),
        (Decimal("0.001"), "EUR", "at most 2 decimal places"),
        (Decimal("1.5"), "JPY", "at most 0 decimal places"),
        (Decimal("NaN"), "EUR", "finite Decimal"),
        (Decimal("Infinity"), "EUR", "finite Decimal"),
        (Decimal("-Infinity"), "EUR", "finite Decimal"),
        (1.5, "EUR", "finite Decimal"),
        (2, "EUR", "finite Decimal"),
        ("1.00", "EUR", "finite Decimal"),
    ],
    ids=repr,
)
def test_unsound_money_is_refused(amount, currency, words):
    with pytest.raises(ValueError, match=words):
        Money(amount, currency)


def test_an_amount_beyond_decimal_precision_is_refused_as_unsound():
    with pytest.raises(ValueError, match="out of range"):
        Money(Decimal("1e30"), "EUR")


def test_minor_units_past_a_signed_64_bit_integer_are_not_storable():
    Money.from_minor(2**63 - 1, "JPY").check_storable()
    Money.from_minor(-(2**63 - 1), "EUR").check_storable()

    for amount, currency in [(Decimal(2**63), "JPY"), (Decimal("100000000000000000000.00"), "EUR")]:
        with pytest.raises(ValueError, match="out of range"):
            Money(amount, currency).check_storable()
