"""Money rules of the promos app: one amount parser, one bonus function. Decimal only.

Every amount is in a currency (ISO 4217, core.money) and has that currency's own minor unit:
``12.50`` USD, ``1500`` JPY, ``1.250`` KWD. The columns keep ``STORED_PLACES`` places for every
currency (as bookings' do); the currency's own places are judged here, nowhere else.
"""

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from core import money
from core.money import TooManyDecimals

HUNDRED = Decimal("100")
# The ceiling of an amount whose currency is not known yet (the code's or session's row will tell): the
# largest any currency has, a zero-decimal one's (core.money.max_amount); well inside max_digits=13.
ANY_CURRENCY_MAX = Decimal(money.MAX_MINOR_UNITS)
# The promo amount columns' decimal_places: every ISO 4217 currency but CLF and UYW (4, not payable) fits.
STORED_PLACES = 3
# A percentage bonus_value is a rate, not money: at most two places (12.50 %), whatever the currency.
PERCENT_PLACES = 2
DEFAULT_CURRENCY = "USD"


def places(currency):
    """Decimal places of an amount in ``currency``: its minor unit, at most what the columns keep."""
    return min(money.exponent(currency), STORED_PLACES)


def quantum(currency):
    """The currency's smallest amount here: 0.01 USD, 1 JPY, 0.001 KWD."""
    return Decimal(1).scaleb(-places(currency))


def places_needed(amount):
    """The fewest decimal places that write ``amount`` exactly: 0 for 10.00, 1 for 1.50, 3 for 1.005."""
    _sign, digits, exponent = Decimal(amount).as_tuple()  # not normalize(): it rounds to the context's 28 digits
    needed = -exponent
    for digit in reversed(digits):
        if needed <= 0 or digit:
            break
        needed -= 1
    return max(needed, 0) if any(digits) else 0


def currencies_coarser_than(needed):
    """The known currencies (a stored session's may be one since withdrawn) in which an amount needing ``needed``
    places is too fine (sorted)."""
    return [code for code in money.known_currencies() if places(code) < needed]


def _decimal(value):
    if isinstance(value, bool) or value is None:
        raise ValueError("not a number")
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int | float | str):
        text = str(value).strip()
        if not text or len(text) > 40:
            raise ValueError("not a number")
        try:
            return Decimal(text)
        except InvalidOperation:
            raise ValueError("not a number")
    raise ValueError("not a number")


def maximum(currency):
    """The largest amount in ``currency`` (what a card processor charges at once, ``core.money.max_amount``),
    or of any currency (``ANY_CURRENCY_MAX``) when it is not known yet."""
    return ANY_CURRENCY_MAX if currency is None else money.max_amount(currency)


def written_maximum(currency):
    """``maximum(currency)`` as an answer writes it: "999999.99" USD, "99999999" JPY or any currency."""
    return f"{ANY_CURRENCY_MAX:f}" if currency is None else money.in_currency(maximum(currency), currency)


def parse_amount(value, *, currency):
    """Return ``value`` as a Decimal with exactly the currency's places, or refuse it.

    Accepts a Decimal, an int or a numeric string (floats only via their shortest
    repr, so 0.1 stays 0.1). Raises ValueError for bools, NaN, infinities, zero or
    negative amounts and anything above the currency's ``maximum``; TooManyDecimals (400
    ``amount_precision``) for more places than the currency has (1.5 JPY, 1.2345 KWD).
    ``currency=None`` (not known yet: the code's or session's row will tell) allows the
    places and the ceiling of any currency and keeps the amount as written.
    """
    amount = _decimal(value)
    if not amount.is_finite():
        raise ValueError("not finite")
    if amount <= 0:
        raise ValueError("not positive")
    if amount > maximum(currency):
        raise ValueError("too large")
    if currency is None:
        if places_needed(amount) > STORED_PLACES:
            raise ValueError("more places than any currency has")
        return amount
    return require_places(amount, currency)


def require_places(amount, currency):
    """``amount`` with exactly the currency's places; TooManyDecimals (400 ``amount_precision``) if finer."""
    amount = Decimal(amount)
    if places_needed(amount) > places(currency):
        raise TooManyDecimals(currency, places(currency))
    return amount.quantize(quantum(currency))


def written_bonus_value(promo):
    """A code's ``bonus_value`` as written everywhere: a rate with ``PERCENT_PLACES`` places ("12.50") for a
    percentage, an amount with its currency's places ("500" JPY) for a fixed bonus."""
    if promo.bonus_type == "percentage":
        return f"{promo.bonus_value:.{PERCENT_PLACES}f}"
    return money.in_currency(promo.bonus_value, promo.currency)


def parse_percentage(value):
    """A percentage bonus_value: > 0, at most 100, at most ``PERCENT_PLACES`` places; ValueError otherwise."""
    rate = _decimal(value)
    if not rate.is_finite() or rate <= 0 or rate > HUNDRED or places_needed(rate) > PERCENT_PLACES:
        raise ValueError("not a percentage")
    return rate.quantize(Decimal(1).scaleb(-PERCENT_PLACES))


def compute_bonus(*, bonus_type, bonus_value, amount, currency, max_bonus=None):
    """Return the bonus for ``amount``: never negative, never above the amount or ``max_bonus``.

    ``fixed`` gives ``bonus_value``; ``percentage`` gives ``amount * value / 100``
    rounded half-up to the currency's minor unit (15 % of 33.33 USD = 4.9995 -> 5.00;
    15 % of 333 JPY = 49.95 -> 50). The result always has exactly the currency's places.
    """
    step = quantum(currency)
    amount = Decimal(amount)
    value = Decimal(bonus_value)
    if bonus_type == "percentage":
        bonus = (amount * value / HUNDRED).quantize(step, rounding=ROUND_HALF_UP)
    elif bonus_type == "fixed":
        bonus = value.quantize(step, rounding=ROUND_HALF_UP)
    else:
        raise ValueError(f"unknown bonus type {bonus_type!r}")
    if max_bonus is not None:
        bonus = min(bonus, Decimal(max_bonus))
    bonus = min(bonus, amount)
    return max(bonus, Decimal(0)).quantize(step, rounding=ROUND_HALF_UP)
