from decimal import Decimal

import pytest

from core.money import (
    NOT_PAYABLE,
    PAYABLE,
    AmountNotANumber,
    TooManyDecimals,
    UnknownCurrency,
    check_precision,
    exponent,
    from_minor_units,
    payable,
    to_minor_units,
)


@pytest.mark.parametrize(("code", "places"), [("USD", 2), ("EUR", 2), ("JPY", 0), ("KRW", 0), ("KWD", 3), ("BHD", 3)])
def test_each_currency_has_its_own_minor_unit(code, places):
    assert exponent(code) == places


@pytest.mark.parametrize("code", ["ABC", "usd", "US", "USDX", "", "XXX", "XAU", None, 840])
def test_only_payable_iso_4217_codes_are_currencies(code):
    with pytest.raises(UnknownCurrency):
        exponent(code)


@pytest.mark.parametrize(
    ("amount", "code", "minor"),
    [
        ("120.00", "USD", 12000),
        ("0.01", "USD", 1),
        ("1500", "JPY", 1500),
        ("12.340", "KWD", 12340),
        ("1.5", "KWD", 1500),
        ("99999999.99", "USD", 9999999999),
        ("1000.00", "MGA", 1000),  # zero-decimal at Stripe, two places in ISO 4217
        ("1500", "ISK", 150000),  # two-decimal in Stripe's API, none in ISO 4217
        ("5000", "UGX", 5000),  # zero-decimal in both
    ],
)
def test_provider_amounts_follow_the_exponent(amount, code, minor):
    assert to_minor_units(Decimal(amount), code) == minor
    assert from_minor_units(minor, code) == Decimal(amount)


@pytest.mark.parametrize(
    ("amount", "code"), [("1.001", "USD"), ("1500.5", "JPY"), ("1.2345", "KWD"), ("1.234", "KWD"), ("1000.50", "MGA")]
)
def test_more_precision_than_the_currency_or_the_provider_allows_is_refused(amount, code):
    with pytest.raises(TooManyDecimals):
        to_minor_units(Decimal(amount), code)


def test_precision_check_normalizes_places():
    assert str(check_precision(Decimal("5"), "USD")) == "5.00"
    assert str(check_precision(Decimal("5.000"), "JPY")) == "5"


@pytest.mark.parametrize("amount", ["twelve", "", None, "NaN", "Infinity", [1]])
def test_an_amount_that_is_not_a_finite_number_has_its_own_code(amount):
    with pytest.raises(AmountNotANumber) as refusal:
        check_precision(amount, "USD")
    assert refusal.value.code == "amount_not_a_number"


def test_payable_is_cldrs_legal_tender_on_the_day_the_list_was_taken():
    """``PAYABLE`` is frozen (it changes with a deploy, not with the day a process started): the currencies
    legal tender in some territory on 2026-12-07 by the pinned Babel's CLDR data, that py-moneyed knows. To
    regenerate it after a Babel upgrade or a currency's end, run this recipe with the new date."""
    import datetime

    import moneyed
    from babel.core import get_global
    from babel.numbers import get_territory_currencies

    day = datetime.date(2026, 12, 7)
    tender = {
        code
        for territory in get_global("territory_currencies")
        for code in get_territory_currencies(territory, start_date=day, tender=True)
    }
    assert PAYABLE == tender & set(moneyed.CURRENCIES)
    assert not PAYABLE & NOT_PAYABLE


@pytest.mark.parametrize("code", ["DEM", "HRK", "BGN", "CLF", "UYW"])
def test_a_currency_since_withdrawn_is_not_payable_but_still_known(code):
    """New terms may not name it (no provider charges in it); a row stored in it is still computed with its
    minor unit, so its payment, refund or dispute is settled."""
    with pytest.raises(UnknownCurrency):
        payable(code)
    assert exponent(code) in (2, 4)
    assert to_minor_units(Decimal("12.00"), code) in (1200, 120000)
