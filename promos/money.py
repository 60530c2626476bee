"""Money rules of the promos app: one amount parser, one bonus function. Decimal only."""

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

CENT = Decimal("0.01")
ZERO = Decimal("0.00")
HUNDRED = Decimal("100")
MAX_AMOUNT = Decimal("1000000.00")  # a sane ceiling for one purchase; also well inside max_digits=12


def parse_amount(value, *, maximum=MAX_AMOUNT):
    """Return ``value`` as a Decimal with two places, or raise ValueError.

    Accepts a Decimal, an int or a numeric string (floats only via their shortest
    repr, so 0.1 stays 0.1). Refuses bools, NaN, infinities, zero or negative
    amounts, more than two decimal places and anything above ``maximum``.
    """
    if isinstance(value, bool) or value is None:
        raise ValueError("not a number")
    if isinstance(value, Decimal):
        amount = value
    elif isinstance(value, int | float | str):
        text = str(value).strip()
        if not text or len(text) > 40:
            raise ValueError("not a number")
        try:
            amount = Decimal(text)
        except InvalidOperation:
            raise ValueError("not a number")
    else:
        raise ValueError("not a number")
    if not amount.is_finite():
        raise ValueError("not finite")
    if amount <= 0:
        raise ValueError("not positive")
    if amount > maximum:
        raise ValueError("too large")
    if amount.as_tuple().exponent < -2 and amount != amount.quantize(CENT):
        raise ValueError("more than two decimal places")
    return amount.quantize(CENT)


def compute_bonus(*, bonus_type, bonus_value, amount, max_bonus=None):
    """Return the bonus for ``amount``: never negative, never above the amount or ``max_bonus``.

    ``fixed`` gives ``bonus_value``; ``percentage`` gives ``amount * value / 100``
    rounded half-up to cents (15 % of 33.33 = 4.9995 -> 5.00). The result always
    has exactly two decimal places.
    """
    amount = Decimal(amount)
    value = Decimal(bonus_value)
    if bonus_type == "percentage":
        bonus = (amount * value / HUNDRED).quantize(CENT, rounding=ROUND_HALF_UP)
    elif bonus_type == "fixed":
        bonus = value.quantize(CENT, rounding=ROUND_HALF_UP)
    else:
        raise ValueError(f"unknown bonus type {bonus_type!r}")
    if max_bonus is not None:
        bonus = min(bonus, Decimal(max_bonus))
    bonus = min(bonus, amount)
    return max(bonus, ZERO).quantize(CENT, rounding=ROUND_HALF_UP)
