"""Domain errors of the bookings app."""

from django.utils.translation import gettext_lazy as _

from core.exceptions import Conflict, DomainError, InvalidInput, NotFound
from core.guards import constraint_errors


class PackageNotFound(NotFound):
    code = "package_not_found"
    message = _("This package does not exist or is not available.")


class BookingNotFound(NotFound):
    code = "booking_not_found"
    message = _("This booking does not exist.")


class CheckoutNotFound(NotFound):
    code = "checkout_not_found"
    message = _("This checkout does not exist.")


class DateUnavailable(Conflict):
    code = "date_unavailable"
    message = _("This date is fully booked for this package.")


class DateInPast(InvalidInput):
    code = "date_in_past"
    message = _("The date %(date)s is in the past.")


class DateRangeInvalid(InvalidInput):
    code = "date_range_invalid"
    message = _("The date range must start on or before its end and span at most %(days)s days.")


class BookingNotCancellable(Conflict):
    code = "booking_not_cancellable"
    message = _("Only a held, payment-pending or confirmed booking can be cancelled; this one is %(status)s.")


class BookingNotHeld(Conflict):
    code = "booking_not_held"
    message = _("Only a held booking can be released; this one is %(status)s.")


class BookingNotRefundPending(Conflict):
    code = "booking_not_refund_pending"
    message = _("Only a booking waiting for its refund can be refunded; this one is %(status)s.")


class PaymentProviderUnavailable(DomainError):
    code = "payment_provider_unavailable"
    status_code = 503
    retry_later = True  # a command that met it exits 3, as for a busy row: run again later
    message = _("The payment provider is unavailable. Nothing was charged and the date was released; try again.")


class InvalidSignature(InvalidInput):
    code = "invalid_signature"
    message = _("The webhook signature is missing, stale or wrong.")


class MalformedEvent(InvalidInput):
    code = "malformed_event"
    message = _("The webhook payload is not a valid payment event.")


class PackageInUse(Conflict):
    code = "package_in_use"
    message = _("This package has bookings or proposals; deactivate it instead of deleting it.")


class CapacityBelowOccupancy(Conflict):
    """A lower daily capacity would leave dates holding more bookings than it allows; nothing was written."""

    code = "capacity_below_occupancy"
    message = _("A daily capacity of %(capacity)s is below the bookings already on %(count)s date(s): %(dates)s.")


class PackageInvalid(InvalidInput):
    code = "package_invalid"
    message = _("A package needs a price of at least 0, a daily capacity of at least 1 and a 3-letter currency code.")


class BookingStateInvalid(Conflict):
    """A write the booking or checkout rules refuse (a bug upstream, refused by the database)."""

    code = "booking_state_invalid"
    message = _("This change would leave the booking or its payment in an invalid state; nothing was written.")


# Every constraint of the bookings tables, as the refusal it means (core.guards.database_refusals).
constraint_errors(
    {
        "package_price_not_negative": PackageInvalid,
        "package_capacity_positive": PackageInvalid,
        "package_currency_iso": PackageInvalid,
        "booking_one_confirmed_per_exclusive_date": DateUnavailable,
        "booking_within_capacity": DateUnavailable,
        "booking_refunded_has_time": BookingStateInvalid,
        "booking_amount_not_negative": BookingStateInvalid,
        "booking_held_has_expiry": BookingStateInvalid,
        "booking_confirmed_has_time": BookingStateInvalid,
        "booking_status_valid": BookingStateInvalid,
        "checkout_amount_not_negative": BookingStateInvalid,
        "checkout_open_has_provider_id": BookingStateInvalid,
        "checkout_state_valid": BookingStateInvalid,
        "checkout_refund_state_valid": BookingStateInvalid,
    }
)
