"""Currencies and amounts: ISO 4217 codes with their own minor units, Decimal end to end.

Why py-moneyed (pinned in requirements.txt): it ships the ISO 4217 table with each
currency's minor unit (``sub_unit``: 100 for USD, 1 for JPY, 1000 for KWD) and
nothing else we do not need; Babel's CLDR digits differ from ISO 4217 for several
currencies (cash rounding), which is not what a card processor charges in.

Which codes a customer can pay in is CLDR's (Babel, pinned, py-moneyed's own dependency): the
currencies that are legal tender in some territory today. py-moneyed's table keeps every code
ISO 4217 ever listed (the Deutsche Mark, the Croatian kuna) and the fund codes (BOV, CLF, USN...):
a price in one of them passed every check and failed at the provider, on every checkout.
"""

import datetime
import functools
from decimal import ROUND_DOWN, Decimal, InvalidOperation

import moneyed
from babel.core import get_global
from babel.numbers import get_territory_currencies

from core.exceptions import InvalidInput

# Stripe: three-decimal currencies are sent in thousandths, and the last digit must be 0.
STRIPE_THREE_DECIMAL = frozenset({"BHD", "JOD", "KWD", "OMR", "TND"})
# Where the integer Stripe takes does not count ISO 4217's minor unit (docs.stripe.com/currencies):
# MGA is zero-decimal there (ISO: 2 places), so whole ariary only; ISK stays two-decimal in Stripe's
# API (100 is 1 króna; ISO: 0 places), so whole krónur are sent times 100.
STRIPE_EXPONENT = {"MGA": 0, "ISK": 2}
# The largest integer Stripe charges in one amount: eight digits of what it is sent in
# (docs.stripe.com/currencies, "maximum charge amount"): $999,999.99, ¥99,999,999, 99,999.990 KWD.
MAX_MINOR_UNITS = 99_999_999


class UnknownCurrency(InvalidInput):
    code = "unknown_currency"

    def __init__(self, currency):
        from django.utils.translation import gettext_lazy as _

        super().__init__(_("%(currency)s is not an ISO 4217 currency code."), currency=currency)


class TooManyDecimals(InvalidInput):
    code = "amount_precision"

    def __init__(self, currency, places):
        from django.utils.translation import gettext_lazy as _

        super().__init__(
            _("Amounts in %(currency)s have at most %(places)s decimal places."), currency=currency, places=places
        )


class AmountTooLarge(InvalidInput):
    code = "amount_too_large"

    def __init__(self, currency, maximum):
        from django.utils.translation import gettext_lazy as _

        super().__init__(_("Amounts in %(currency)s are at most %(maximum)s."), currency=currency, maximum=maximum)


class AmountNotANumber(InvalidInput):
    code = "amount_not_a_number"

    def __init__(self):
        from django.utils.translation import gettext_lazy as _

        super().__init__(_("The amount must be a decimal number."))


def currency(code):
    """The py-moneyed Currency for an ISO 4217 code a customer can pay in, or UnknownCurrency."""
    if not isinstance(code, str) or len(code) != 3 or not code.isascii() or not code.isupper():
        raise UnknownCurrency(str(code)[:8])
    if code not in _payable():
        raise UnknownCurrency(code)
    return moneyed.get_currency(code)


def payable_currencies():
    """Every code ``currency()`` accepts, sorted (the API schema's enum)."""
    return sorted(_payable())


@functools.cache
def _payable():
    """ISO 4217 codes that are legal tender in some territory today (CLDR) and in py-moneyed's table (for their
    minor unit): no withdrawn currency, no fund or testing code, no metal. Read once per process."""
    today = datetime.date.today()
    tender = {
        code
        for territory in get_global("territory_currencies")
        for code in get_territory_currencies(territory, start_date=today, tender=True)
    }
    return frozenset(tender & set(moneyed.CURRENCIES))


def exponent(code):
    """Decimal places of the currency's minor unit: 2 for USD, 0 for JPY, 3 for KWD."""
    sub_unit = currency(code).sub_unit
    return len(str(sub_unit)) - 1


def check_precision(amount, code):
    """Return ``amount`` as a Decimal with exactly the currency's places; refuse more precision."""
    try:
        amount = Decimal(amount)
    except (InvalidOperation, TypeError, ValueError):
        raise AmountNotANumber() from None
    if not amount.is_finite():
        raise AmountNotANumber()
    places = exponent(code)
    quantum = Decimal(1).scaleb(-places)
    if amount != amount.quantize(quantum):
        raise TooManyDecimals(code, places)
    return amount.quantize(quantum)


def in_currency(amount, code):
    """``amount`` written with exactly its currency's places ("450.00" USD, "1500" JPY, "1.250" KWD), for display.

    None stays None. The managers refuse finer amounts, so this never rounds; a code outside ISO 4217, or an
    amount finer than its currency (a row older than those rules), is written as stored, never a 500.
    """
    if amount is None:
        return None
    try:
        return f"{check_precision(amount, code):f}"
    except InvalidInput:
        return f"{Decimal(amount):f}"


def provider_exponent(code):
    """Decimal places of the integer a card processor is sent (Stripe's convention): ISO 4217's but
    for ``STRIPE_EXPONENT``."""
    return STRIPE_EXPONENT.get(code, exponent(code))


@functools.cache  # a known currency's is fixed (an unknown one raises, which is not kept)
def max_amount(code):
    """The largest amount a card processor charges in ``code`` (``MAX_MINOR_UNITS`` of what it is sent in),
    with the currency's own places: 999999.99 USD, 99999999 JPY, 99999.990 KWD, 999999 ISK."""
    minor = MAX_MINOR_UNITS - (MAX_MINOR_UNITS % 10 if code in STRIPE_THREE_DECIMAL else 0)  # ends in 0 there
    largest = Decimal(minor).scaleb(-provider_exponent(code))
    return largest.quantize(Decimal(1).scaleb(-exponent(code)), rounding=ROUND_DOWN)


def check_maximum(amount, code):
    """``amount`` when a card processor could charge it in ``code``; else AmountTooLarge (400 ``amount_too_large``)."""
    largest = max_amount(code)
    if Decimal(amount) > largest:
        raise AmountTooLarge(code, in_currency(largest, code))
    return amount


def to_minor_units(amount, code):
    """The integer a card processor (Stripe's convention) is sent: amount × 10^provider_exponent.

    Refuses an amount with more decimals than the currency has, or than the processor takes (an
    MGA amount in fractions of an ariary; for Stripe's three-decimal currencies, one whose last
    (thousandth) digit is not 0).
    """
    amount = check_precision(amount, code)
    places = provider_exponent(code)
    minor = amount.scaleb(places)
    if minor != minor.to_integral_value():
        raise TooManyDecimals(code, places)
    minor = int(minor)
    if code in STRIPE_THREE_DECIMAL and minor % 10:
        raise TooManyDecimals(code, 2)
    return minor


def from_minor_units(minor, code):
    """The Decimal amount, with the currency's own places, for a processor's integer amount."""
    places = exponent(code)
    return Decimal(int(minor)).scaleb(-provider_exponent(code)).quantize(Decimal(1).scaleb(-places))
