from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.money import TooManyDecimals, in_currency, max_amount
from promos.money import ANY_CURRENCY_MAX, compute_bonus, parse_amount, parse_percentage

USD_MAX = max_amount("USD")  # 999999.99: what a card processor charges at once

amounts = st.decimals(min_value=Decimal("0.01"), max_value=USD_MAX, places=2)
money_values = st.decimals(min_value=Decimal("0.01"), max_value=Decimal("9999999999.99"), places=2)
percentages = st.decimals(min_value=Decimal("0.01"), max_value=Decimal("100"), places=2)
max_bonuses = st.none() | money_values


def assert_bounded_in_cents(bonus, amount, max_bonus):
    assert Decimal("0.00") <= bonus <= amount
    assert max_bonus is None or bonus <= max_bonus
    assert bonus.as_tuple().exponent == -2


@given(amount=amounts, value=percentages, max_bonus=max_bonuses)
def test_percentage_bonus_bounds_and_places(amount, value, max_bonus):
    bonus = compute_bonus(
        currency="USD", bonus_type="percentage", bonus_value=value, amount=amount, max_bonus=max_bonus
    )
    assert_bounded_in_cents(bonus, amount, max_bonus)


@given(amount=amounts, value=money_values, max_bonus=max_bonuses)
def test_fixed_bonus_bounds_and_places(amount, value, max_bonus):
    bonus = compute_bonus(currency="USD", bonus_type="fixed", bonus_value=value, amount=amount, max_bonus=max_bonus)
    assert_bounded_in_cents(bonus, amount, max_bonus)
    assert bonus == min(value, amount, max_bonus if max_bonus is not None else value)


@given(amount=amounts, value=percentages)
def test_percentage_is_half_up_to_cents(amount, value):
    bonus = compute_bonus(currency="USD", bonus_type="percentage", bonus_value=value, amount=amount)
    exact = amount * value / 100
    # half-up: the exact value lies in [bonus - 0.005, bonus + 0.005), unless capped by the amount
    if bonus < amount:
        assert bonus - Decimal("0.005") <= exact < bonus + Decimal("0.005")


@pytest.mark.parametrize(
    ("value", "amount", "expected"),
    [
        ("15", "33.33", "5.00"),  # 4.9995 rounds half up
        ("10", "0.05", "0.01"),  # 0.005 rounds up, never to zero
        ("10", "0.04", "0.00"),  # 0.004 rounds down: never negative
        ("12.5", "0.20", "0.03"),  # 0.025 -> 0.03 (banker's rounding would give 0.02)
        ("100", "19.99", "19.99"),
    ],
)
def test_percentage_examples(value, amount, expected):
    assert compute_bonus(
        currency="USD", bonus_type="percentage", bonus_value=Decimal(value), amount=Decimal(amount)
    ) == Decimal(expected)


def test_caps():
    assert compute_bonus(
        currency="USD",
        bonus_type="percentage",
        bonus_value=Decimal("50"),
        amount=Decimal("400"),
        max_bonus=Decimal("25"),
    ) == Decimal("25.00")
    assert compute_bonus(
        currency="USD", bonus_type="fixed", bonus_value=Decimal("50"), amount=Decimal("20")
    ) == Decimal("20.00")


def test_unknown_bonus_type_is_a_bug():
    with pytest.raises(ValueError):
        compute_bonus(currency="USD", bonus_type="free", bonus_value=Decimal("1"), amount=Decimal("1"))


@pytest.mark.parametrize("value", ["10", "10.5", "10.50", 10, 10.5, Decimal("0.01"), "999999.99", "  7.10 ", "1E+1"])
def test_parse_amount_accepts(value):
    amount = parse_amount(value, currency="USD")
    assert amount > 0 and amount.as_tuple().exponent == -2


@pytest.mark.parametrize(
    "value",
    [
        "NaN",
        "nan",
        "Infinity",
        "-Infinity",
        "inf",
        float("nan"),
        float("inf"),
        "1e400",
        1e300,
        "-1",
        "0",
        "0.00",
        "1000000.00",
        "abc",
        "",
        "10,00",
        True,
        None,
        [],
        {},
        "9" * 60,
        Decimal("sNaN"),
        "123456789012345678901234567890.001",
        "1E+999999",
    ],
)
def test_parse_amount_refuses(value):
    with pytest.raises(ValueError):
        parse_amount(value, currency="USD")


@given(st.decimals(allow_nan=True, allow_infinity=True) | st.floats() | st.text(max_size=50) | st.integers())
def test_parse_amount_never_crashes_otherwise(value):
    try:
        amount = parse_amount(value, currency="USD")
    except (ValueError, TooManyDecimals):
        return
    assert Decimal("0.01") <= amount <= USD_MAX and amount.as_tuple().exponent == -2


@pytest.mark.parametrize("value", ["1.001", "0.001", "12.345", "1.0000000000000000000000000000001"])
def test_parse_amount_refuses_more_places_than_usd_has(value):
    with pytest.raises(TooManyDecimals) as refused:
        parse_amount(value, currency="USD")
    assert refused.value.code == "amount_precision" and refused.value.params == {"currency": "USD", "places": 2}


@pytest.mark.parametrize(
    ("value", "currency", "expected"),
    [
        ("1500", "JPY", "1500"),
        ("1500.000", "JPY", "1500"),
        ("1.250", "KWD", "1.250"),
        ("1.25", "KWD", "1.250"),
        ("12.5", "USD", "12.50"),
        ("7.123", "CLF", "7.123"),  # CLF has 4 places in ISO 4217; the columns keep 3
    ],
)
def test_parse_amount_has_the_currency_places(value, currency, expected):
    amount = parse_amount(value, currency=currency)
    assert str(amount) == expected


@pytest.mark.parametrize(("value", "currency"), [("1.5", "JPY"), ("0.1", "KRW"), ("1.2345", "KWD"), ("1.0001", "CLF")])
def test_parse_amount_refuses_finer_than_the_currency(value, currency):
    with pytest.raises(TooManyDecimals):
        parse_amount(value, currency=currency)


def test_parse_amount_without_a_currency_keeps_up_to_three_places_for_the_row_to_judge():
    assert str(parse_amount("1.5", currency=None)) == "1.5"
    assert str(parse_amount("1.250", currency=None)) == "1.250"
    with pytest.raises(ValueError):
        parse_amount("1.0001", currency=None)


@pytest.mark.parametrize(
    ("value", "amount", "currency", "expected"),
    [
        ("15", "333", "JPY", "50"),  # 49.95 yen rounds half up to whole yen
        ("15", "330", "JPY", "50"),  # 49.5 -> 50 (half up, not to even)
        ("15", "329", "JPY", "49"),  # 49.35 -> 49
        ("10", "4", "JPY", "0"),  # 0.4 -> 0: never negative
        ("15", "33.333", "KWD", "5.000"),  # 4.99995 -> 5.000
        ("12.5", "0.020", "KWD", "0.003"),  # 0.0025 -> 0.003
        ("15", "33.33", "USD", "5.00"),
    ],
)
def test_percentage_rounds_half_up_to_the_currency_minor_unit(value, amount, currency, expected):
    bonus = compute_bonus(
        bonus_type="percentage", bonus_value=Decimal(value), amount=Decimal(amount), currency=currency
    )
    assert str(bonus) == expected


def test_fixed_bonus_and_caps_have_the_currency_places():
    assert str(
        compute_bonus(bonus_type="fixed", bonus_value=Decimal("500"), amount=Decimal("300"), currency="JPY")
    ) == ("300")
    assert str(
        compute_bonus(
            bonus_type="percentage",
            bonus_value=Decimal("50"),
            amount=Decimal("10.000"),
            currency="KWD",
            max_bonus=Decimal("1.250"),
        )
    ) == ("1.250")


@pytest.mark.parametrize(
    ("amount", "currency", "shown"),
    [("12.5", "USD", "12.50"), ("1500.000", "JPY", "1500"), ("1.25", "KWD", "1.250"), (None, "USD", None)],
)
def test_amounts_are_written_with_the_currency_places(amount, currency, shown):
    assert in_currency(None if amount is None else Decimal(amount), currency) == shown


def test_an_amount_of_a_row_outside_iso_4217_is_shown_as_stored():
    assert in_currency(Decimal("1.500"), "ZZZ") == "1.500"


@pytest.mark.parametrize("value", ["12.5", "100", "0.01", "99.99"])
def test_a_percentage_has_two_places(value):
    assert parse_percentage(value) == Decimal(value)


@pytest.mark.parametrize("value", ["12.345", "0", "100.01", "-1", "NaN"])
def test_a_percentage_with_more_places_or_out_of_range_is_refused(value):
    with pytest.raises(ValueError):
        parse_percentage(value)


@pytest.mark.parametrize(
    "currency, largest",
    [("USD", "999999.99"), ("JPY", "99999999"), ("KWD", "99999.990"), ("ISK", "999999"), ("MGA", "99999999.00")],
)
def test_the_ceiling_is_eight_digits_of_what_a_processor_is_sent_in_each_currency(currency, largest):
    """Stripe's largest charge, 99,999,999 of the unit it is sent in (ISK in hundredths, MGA in whole ariary,
    KWD in thousandths ending in 0)."""
    assert parse_amount(largest, currency=currency) == Decimal(largest)
    step = Decimal(1).scaleb(Decimal(largest).as_tuple().exponent)
    with pytest.raises(ValueError):
        parse_amount(Decimal(largest) + step, currency=currency)


def test_an_amount_whose_currency_is_not_known_yet_may_reach_any_currencys_ceiling():
    assert parse_amount("99999999", currency=None) == ANY_CURRENCY_MAX
    with pytest.raises(ValueError):
        parse_amount("99999999.001", currency=None)
