from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from promos.money import MAX_AMOUNT, compute_bonus, parse_amount

amounts = st.decimals(min_value=Decimal("0.01"), max_value=MAX_AMOUNT, places=2)
money_values = st.decimals(min_value=Decimal("0.01"), max_value=Decimal("9999999999.99"), places=2)
percentages = st.decimals(min_value=Decimal("0.01"), max_value=Decimal("100"), places=2)
max_bonuses = st.none() | money_values


def assert_bounded_in_cents(bonus, amount, max_bonus):
    assert Decimal("0.00") <= bonus <= amount
    assert max_bonus is None or bonus <= max_bonus
    assert bonus.as_tuple().exponent == -2


@given(amount=amounts, value=percentages, max_bonus=max_bonuses)
def test_percentage_bonus_bounds_and_places(amount, value, max_bonus):
    bonus = compute_bonus(bonus_type="percentage", bonus_value=value, amount=amount, max_bonus=max_bonus)
    assert_bounded_in_cents(bonus, amount, max_bonus)


@given(amount=amounts, value=money_values, max_bonus=max_bonuses)
def test_fixed_bonus_bounds_and_places(amount, value, max_bonus):
    bonus = compute_bonus(bonus_type="fixed", bonus_value=value, amount=amount, max_bonus=max_bonus)
    assert_bounded_in_cents(bonus, amount, max_bonus)
    assert bonus == min(value, amount, max_bonus if max_bonus is not None else value)


@given(amount=amounts, value=percentages)
def test_percentage_is_half_up_to_cents(amount, value):
    bonus = compute_bonus(bonus_type="percentage", bonus_value=value, amount=amount)
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
    assert compute_bonus(bonus_type="percentage", bonus_value=Decimal(value), amount=Decimal(amount)) == Decimal(
        expected
    )


def test_caps():
    assert compute_bonus(
        bonus_type="percentage", bonus_value=Decimal("50"), amount=Decimal("400"), max_bonus=Decimal("25")
    ) == Decimal("25.00")
    assert compute_bonus(bonus_type="fixed", bonus_value=Decimal("50"), amount=Decimal("20")) == Decimal("20.00")


def test_unknown_bonus_type_is_a_bug():
    with pytest.raises(ValueError):
        compute_bonus(bonus_type="free", bonus_value=Decimal("1"), amount=Decimal("1"))


@pytest.mark.parametrize("value", ["10", "10.5", "10.50", 10, 10.5, Decimal("0.01"), "1000000.00", "  7.10 ", "1E+1"])
def test_parse_amount_accepts(value):
    amount = parse_amount(value)
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
        "1.001",
        "0.001",
        "1000000.01",
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
        parse_amount(value)


@given(st.decimals(allow_nan=True, allow_infinity=True) | st.floats() | st.text(max_size=50) | st.integers())
def test_parse_amount_never_crashes_otherwise(value):
    try:
        amount = parse_amount(value)
    except ValueError:
        return
    assert Decimal("0.01") <= amount <= MAX_AMOUNT and amount.as_tuple().exponent == -2
