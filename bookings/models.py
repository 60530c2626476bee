from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _

from bookings.managers import BookingManager, CheckoutManager, PackageManager, PaymentEventManager
from core import money
from core.exceptions import InvalidInput
from core.history import tracked
from core.integrity import BumpVersion, GuardedModel, StateMachine


def in_currency(amount, code):
    """``amount`` with exactly its currency's decimals ("450.00" USD, "1500" JPY, "1.250" KWD) for display.

    The columns keep three places for every currency; the manager refuses finer prices,
    so quantizing never rounds. A code outside ISO 4217 (a row older than that rule) is shown as stored.
    """
    if amount is None:
        return None
    try:
        return money.check_precision(amount, code)
    except InvalidInput:
        return amount


def _within(field, choices, name):
    """A CHECK that ``field`` holds one of ``choices`` (the state machine's trigger guards the moves)."""
    return models.CheckConstraint(condition=Q(**{f"{field}__in": [value for value, _label in choices]}), name=name)


# What operators and API clients edit on a package (edit_package); a change by anyone bumps ``version``.
PACKAGE_EDITABLE = ("name", "price", "currency", "active", "daily_capacity")
# The contact fields operators edit (edit_contact), and the status they saw: a form read before a
# payment, a cancel or an expiry committed is stale (version_conflict), never written over it.
BOOKING_EDITABLE = ("customer_name", "customer_email")
BOOKING_VERSIONED = (*BOOKING_EDITABLE, "status")


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
    SUCCEEDED = "succeeded", _("succeeded")
    FAILED = "failed", _("failed, to retry")
    # Retries exhausted (REFUND_MAX_ATTEMPTS): left for an operator, retried only by an explicit admin action.
    EXHAUSTED = "exhausted", _("failed, needs an operator")


@tracked()
class Package(GuardedModel):
    """Something a customer books for one date; ``daily_capacity`` bookings fit on a date.

    Capacity, price, currency and ``active`` are what checkouts count and charge
    against: they change only through ``Package.objects.edit_package`` (the package
    lock exclusive, which every hold and payment takes shared).
    """

    guarded_fields = ("daily_capacity", "active", "currency", "price", "tenant")

    tenant = models.ForeignKey("core.Tenant", on_delete=models.CASCADE, related_name="packages")
    name = models.CharField(_("name"), max_length=200)
    # Three places so KWD, BHD, JOD, OMR and TND fit; the currency's own exponent is checked by the
    # manager (core.money.check_precision), so a USD price never carries a third digit.
    price = models.DecimalField(_("price"), max_digits=13, decimal_places=3)
    currency = models.CharField(_("currency"), max_length=3, default="USD")
    active = models.BooleanField(_("active"), default=True)
    daily_capacity = models.PositiveIntegerField(_("daily capacity"), default=1)
    version = models.PositiveIntegerField(_("version"), default=1, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = PackageManager()

    class Meta:
        ordering = ["tenant", "name", "pk"]
        verbose_name = _("package")
        verbose_name_plural = _("packages")
        constraints = [
            models.CheckConstraint(condition=Q(price__gte=0), name="package_price_not_negative"),
            models.CheckConstraint(condition=Q(daily_capacity__gte=1), name="package_capacity_positive"),
            models.CheckConstraint(condition=Q(currency__regex=r"^[A-Z]{3}$"), name="package_currency_iso"),
        ]
        triggers = [BumpVersion(name="package_version", fields=PACKAGE_EDITABLE)]

    def __str__(self):
        return self.name


@tracked()
class Booking(GuardedModel):
    """One customer's claim on one date of one package.

    Status and everything a payment or the capacity depends on change only through
    the manager's guarded operations; the database refuses any status change outside
    the machine below (``booking_status_transition``), whoever the writer.
    """

    guarded_fields = (
        "status", "hold_expires_at", "confirmed_at", "cancelled_at", "refunded_at", "amount", "currency",
        "exclusive", "package", "date", "tenant", "origin_proposal_id",
    )  # fmt: skip

    Status = BookingStatus

    tenant = models.ForeignKey("core.Tenant", on_delete=models.CASCADE, related_name="bookings")
    package = models.ForeignKey(Package, on_delete=models.PROTECT, related_name="bookings")
    date = models.DateField(_("date"))
    customer_name = models.CharField(_("customer name"), max_length=200)
    customer_email = models.EmailField(_("customer e-mail"))
    status = models.CharField(_("status"), max_length=16, choices=Status.choices, default=Status.HELD)
    hold_expires_at = models.DateTimeField(_("hold expires at"), null=True, blank=True)
    amount = models.DecimalField(_("amount"), max_digits=13, decimal_places=3)
    currency = models.CharField(_("currency"), max_length=3)
    # Copied from the package when the hold is taken: confirmed bookings of a
    # capacity-1 package are unique per date (the constraint below is the backstop).
    exclusive = models.BooleanField(default=False, editable=False)
    # The proposal this booking executes, if any (set once at the hold). A plain id, not a
    # foreign key: proposals depend on bookings. check_invariants matches it against
    # Proposal.booking, so a proposal unlinked from a live booking is detected.
    origin_proposal_id = models.BigIntegerField(null=True, blank=True, editable=False, db_index=True)
    created_at = models.DateTimeField(_("created at"))
    confirmed_at = models.DateTimeField(_("confirmed at"), null=True, blank=True)
    cancelled_at = models.DateTimeField(_("cancelled at"), null=True, blank=True)
    refunded_at = models.DateTimeField(_("refunded at"), null=True, blank=True)
    version = models.PositiveIntegerField(_("version"), default=1, editable=False)

    objects = BookingManager()

    class Meta:
        ordering = ["-date", "-pk"]
        verbose_name = _("booking")
        verbose_name_plural = _("bookings")
        indexes = [models.Index(fields=["package", "date", "status"], name="booking_package_date_status")]
        constraints = [
            models.CheckConstraint(condition=Q(amount__gte=0), name="booking_amount_not_negative"),
            models.CheckConstraint(
                condition=~Q(status="held") | Q(hold_expires_at__isnull=False), name="booking_held_has_expiry"
            ),
            models.CheckConstraint(
                condition=~Q(status="confirmed") | Q(confirmed_at__isnull=False), name="booking_confirmed_has_time"
            ),
            models.UniqueConstraint(
                fields=["package", "date"],
                condition=Q(status="confirmed", exclusive=True),
                name="booking_one_confirmed_per_exclusive_date",
            ),
            _within("status", BookingStatus.choices, "booking_status_valid"),
        ]
        triggers = [
            StateMachine(
                name="booking_status_transition",
                field="status",
                initial=["held"],
                transitions=[
                    ("held", "confirmed"),  # paid in time (confirm_payment)
                    ("held", "payment_pending"),  # completed, payment delayed (await_payment)
                    ("expired", "payment_pending"),  # completed late and delayed, the place still free (await_payment)
                    ("payment_pending", "confirmed"),  # the delayed payment succeeded (confirm_payment)
                    ("payment_pending", "refund_pending"),  # it succeeded but may not be placed (confirm_payment)
                    ("payment_pending", "expired"),  # the delayed payment failed: place released (payment_failed)
                    ("payment_pending", "cancelled"),  # cancelled while the payment settles (cancel)
                    ("expired", "confirmed"),  # paid late, the place still free (confirm_payment)
                    ("held", "refund_pending"),  # paid, the place gone (confirm_payment)
                    ("expired", "refund_pending"),  # paid late, the place gone (confirm_payment)
                    ("cancelled", "refund_pending"),  # paid after the customer cancelled (confirm_payment)
                    ("held", "expired"),  # released, or past its expiry (release, expire_holds)
                    ("held", "cancelled"),  # cancel before payment
                    ("confirmed", "refund_pending"),  # cancel after payment
                    ("refund_pending", "refunded"),  # the provider refunded (complete_refund)
                ],
            ),
            BumpVersion(name="booking_version", fields=BOOKING_VERSIONED),
        ]

    def __str__(self):
        return f"#{self.pk} {self.package} {self.date} ({self.status})"


@tracked()
class Checkout(GuardedModel):
    """The payment side of a booking: intent recorded before the provider is called.

    Two machines, each enforced by a trigger: ``state`` (the provider checkout) and
    ``refund_state`` (the refund owed after a cancellation or a payment that could not
    be placed; a refund is ``pending`` from the moment one caller claimed it).
    """

    guarded_fields = (
        "state", "provider_checkout_id", "provider_payment_id", "url", "refund_state", "provider_refund_id",
        "refund_attempts", "refund_error", "amount", "currency", "booking", "next_retry_at", "refund_requested_at",
    )  # fmt: skip

    State = CheckoutState
    RefundState = CheckoutRefundState

    booking = models.OneToOneField(Booking, on_delete=models.CASCADE, related_name="checkout")
    provider = models.CharField(_("provider"), max_length=32)
    state = models.CharField(_("state"), max_length=16, choices=State.choices, default=State.CREATING)
    provider_checkout_id = models.CharField(max_length=255, null=True, blank=True, unique=True)
    url = models.URLField(max_length=1000, blank=True)
    provider_payment_id = models.CharField(max_length=255, blank=True)
    amount = models.DecimalField(_("amount"), max_digits=13, decimal_places=3)
    currency = models.CharField(_("currency"), max_length=3)
    error = models.CharField(max_length=500, blank=True)
    refund_state = models.CharField(max_length=16, choices=RefundState.choices, default=RefundState.NONE, blank=True)
    provider_refund_id = models.CharField(max_length=255, blank=True)
    refund_attempts = models.PositiveIntegerField(default=0)
    refund_error = models.CharField(max_length=500, blank=True)
    # When the refund was first claimed: past the provider's idempotency window a retry first asks
    # the provider whether it already refunded (find_refund). When a failed refund is due again
    # (exponential backoff, services.refund_backoff).
    refund_requested_at = models.DateTimeField(null=True, blank=True)
    next_retry_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()

    objects = CheckoutManager()

    class Meta:
        verbose_name = _("checkout")
        verbose_name_plural = _("checkouts")
        constraints = [
            models.CheckConstraint(condition=Q(amount__gte=0), name="checkout_amount_not_negative"),
            models.CheckConstraint(
                condition=Q(state="creating") | Q(state="failed") | Q(provider_checkout_id__isnull=False),
                name="checkout_open_has_provider_id",
            ),
            _within("state", CheckoutState.choices, "checkout_state_valid"),
            _within("refund_state", CheckoutRefundState.choices, "checkout_refund_state_valid"),
        ]
        triggers = [
            StateMachine(
                name="checkout_state_transition",
                field="state",
                initial=["creating"],
                transitions=[
                    ("creating", "open"),  # the provider answered (open)
                    ("creating", "failed"),  # the provider refused (fail)
                    ("creating", "expired"),  # (mark_expired)
                    ("open", "expired"),  # the session expired unpaid (mark_expired)
                    # paid: from any unpaid state, so late and out-of-order events still settle (mark_completed)
                    ("creating", "completed"),
                    ("open", "completed"),
                    ("expired", "completed"),
                    ("failed", "completed"),
                    ("processing", "completed"),  # the delayed payment succeeded
                    ("payment_failed", "completed"),  # a success after a failure: money moved, settle it
                    # completed with a delayed payment method (mark_processing)
                    ("creating", "processing"),
                    ("open", "processing"),
                    ("expired", "processing"),
                    ("failed", "processing"),
                    # the delayed payment failed (mark_payment_failed), also before its "completed" arrived
                    ("processing", "payment_failed"),
                    ("creating", "payment_failed"),
                    ("open", "payment_failed"),
                ],
            ),
            StateMachine(
                name="checkout_refund_state_transition",
                field="refund_state",
                initial=[""],
                transitions=[
                    ("", "pending"),  # a refund is owed and claimed (request_refund)
                    ("pending", "succeeded"),  # the provider refunded (refund_succeeded)
                    ("pending", "failed"),  # the provider refused, to retry after a backoff (refund_failed)
                    ("pending", "exhausted"),  # refused REFUND_MAX_ATTEMPTS times: an operator's (refund_failed)
                    ("failed", "pending"),  # claimed again by a retry (claim_refund_retry)
                    ("exhausted", "pending"),  # an operator's explicit retry (claim_refund_retry(operator=True))
                ],
            ),
        ]

    def __str__(self):
        return self.provider_checkout_id or f"checkout #{self.pk}"

    @property
    def display_amount(self):
        return in_currency(self.amount, self.currency)


class PaymentEvent(models.Model):
    """The inbox: each provider event stored once by its id, processed once."""

    provider = models.CharField(max_length=32)
    event_id = models.CharField(max_length=255, unique=True)
    type = models.CharField(max_length=100)
    payload = models.JSONField()
    received_at = models.DateTimeField()
    processed_at = models.DateTimeField(null=True, blank=True)
    result = models.CharField(max_length=100, blank=True)
    booking = models.ForeignKey(Booking, null=True, blank=True, on_delete=models.SET_NULL, related_name="events")
    deliveries = models.PositiveIntegerField(default=1)
    # Set when a signed event does not belong to what it names (another session, another amount or
    # currency, an unknown checkout claiming money): nothing was changed, an operator looks at it.
    needs_review = models.BooleanField(_("needs review"), default=False, db_index=True)
    reviewed_at = models.DateTimeField(_("reviewed at"), null=True, blank=True)
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        verbose_name=_("reviewed by"),
    )

    objects = PaymentEventManager()

    class Meta:
        ordering = ["-received_at", "-pk"]
        verbose_name = _("payment event")
        verbose_name_plural = _("payment events")

    def __str__(self):
        return f"{self.event_id} {self.type}"
