"""Domain errors of the bookings app."""

from django.utils.translation import gettext_lazy as _

from core.exceptions import Conflict, DomainError, InvalidInput, NotFound


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
    message = _("Only a held or confirmed booking can be cancelled; this one is %(status)s.")


class BookingNotHeld(Conflict):
    code = "booking_not_held"
    message = _("Only a held booking can be released; this one is %(status)s.")


class BookingNotRefundPending(Conflict):
    code = "booking_not_refund_pending"
    message = _("Only a booking waiting for its refund can be refunded; this one is %(status)s.")


class PaymentProviderUnavailable(DomainError):
    code = "payment_provider_unavailable"
    status_code = 503
    message = _("The payment provider is unavailable. Nothing was charged and the date was released; try again.")


class InvalidSignature(InvalidInput):
    code = "invalid_signature"
    message = _("The webhook signature is missing, stale or wrong.")


class MalformedEvent(InvalidInput):
    code = "malformed_event"
    message = _("The webhook payload is not a valid payment event.")


class PackageInUse(Conflict):
    code = "package_in_use"
    message = _("This package has bookings; deactivate it instead of deleting it.")
