"""The states of bookings and checkouts, apart from the models so the managers can name them at import.

(bookings.models imports the managers; the managers' module-level rules, ``LIVE_STATUSES`` and
``active_q``, need the members.)
"""

from django.db import models
from django.utils.translation import gettext_lazy as _


class BookingStatus(models.TextChoices):
    HELD = "held", _("held")
    CONFIRMED = "confirmed", _("confirmed")
    # Checkout completed with a delayed payment method (bank debit, transfer): the place is kept,
    # without a hold expiry, until the provider says the payment succeeded or failed.
    PAYMENT_PENDING = "payment_pending", _("payment pending")
    CANCELLED = "cancelled", _("cancelled")
    EXPIRED = "expired", _("expired")
    REFUND_PENDING = "refund_pending", _("refund pending")
    REFUNDED = "refunded", _("refunded")


class CheckoutState(models.TextChoices):
    CREATING = "creating", _("creating")  # recorded, provider not yet answered
    OPEN = "open", _("open")
    # The session completed but its delayed payment has not settled (payment_status "unpaid").
    PROCESSING = "processing", _("payment processing")
    COMPLETED = "completed", _("completed")
    EXPIRED = "expired", _("expired")
    FAILED = "failed", _("provider failed")
    PAYMENT_FAILED = "payment_failed", _("payment failed")


class CheckoutRefundState(models.TextChoices):
    NONE = "", _("none")
    PENDING = "pending", _("pending")
    # The provider accepted the refund but has not settled it (Stripe: ``pending``, ``requires_action``);
    # its ``refund.updated`` / ``refund.failed`` event says how it ended.
    SUBMITTED = "submitted", _("submitted, awaiting the provider")
    SUCCEEDED = "succeeded", _("succeeded")
    FAILED = "failed", _("failed, to retry")
    # Retries exhausted (REFUND_MAX_ATTEMPTS): left for an operator, retried only by an explicit admin action.
    EXHAUSTED = "exhausted", _("failed, needs an operator")
