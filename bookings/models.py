from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _

from bookings.managers import BookingManager, CheckoutManager, PackageQuerySet, PaymentEventManager


class Package(models.Model):
    """Something a customer books for one date; ``daily_capacity`` bookings fit on a date."""

    tenant = models.ForeignKey("core.Tenant", on_delete=models.CASCADE, related_name="packages")
    name = models.CharField(_("name"), max_length=200)
    price = models.DecimalField(_("price"), max_digits=12, decimal_places=2)
    currency = models.CharField(_("currency"), max_length=3, default="USD")
    active = models.BooleanField(_("active"), default=True)
    daily_capacity = models.PositiveIntegerField(_("daily capacity"), default=1)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = PackageQuerySet.as_manager()

    class Meta:
        ordering = ["tenant", "name", "pk"]
        verbose_name = _("package")
        constraints = [
            models.CheckConstraint(condition=Q(price__gte=0), name="package_price_not_negative"),
            models.CheckConstraint(condition=Q(daily_capacity__gte=1), name="package_capacity_positive"),
            models.CheckConstraint(condition=Q(currency__regex=r"^[A-Z]{3}$"), name="package_currency_iso"),
        ]

    def __str__(self):
        return self.name


class Booking(models.Model):
    """One customer's claim on one date of one package."""

    class Status(models.TextChoices):
        HELD = "held", _("held")
        CONFIRMED = "confirmed", _("confirmed")
        CANCELLED = "cancelled", _("cancelled")
        EXPIRED = "expired", _("expired")
        REFUND_PENDING = "refund_pending", _("refund pending")
        REFUNDED = "refunded", _("refunded")

    tenant = models.ForeignKey("core.Tenant", on_delete=models.CASCADE, related_name="bookings")
    package = models.ForeignKey(Package, on_delete=models.PROTECT, related_name="bookings")
    date = models.DateField(_("date"))
    customer_name = models.CharField(_("customer name"), max_length=200)
    customer_email = models.EmailField(_("customer e-mail"))
    status = models.CharField(_("status"), max_length=16, choices=Status.choices, default=Status.HELD)
    hold_expires_at = models.DateTimeField(_("hold expires at"), null=True, blank=True)
    amount = models.DecimalField(_("amount"), max_digits=12, decimal_places=2)
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

    objects = BookingManager()

    class Meta:
        ordering = ["-date", "-pk"]
        verbose_name = _("booking")
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
        ]

    def __str__(self):
        return f"#{self.pk} {self.package} {self.date} ({self.status})"


class Checkout(models.Model):
    """The payment side of a booking: intent recorded before the provider is called."""

    class State(models.TextChoices):
        CREATING = "creating", _("creating")  # recorded, provider not yet answered
        OPEN = "open", _("open")
        COMPLETED = "completed", _("completed")
        EXPIRED = "expired", _("expired")
        FAILED = "failed", _("provider failed")

    class RefundState(models.TextChoices):
        NONE = "", _("none")
        PENDING = "pending", _("pending")
        SUCCEEDED = "succeeded", _("succeeded")
        FAILED = "failed", _("failed, to retry")

    booking = models.OneToOneField(Booking, on_delete=models.CASCADE, related_name="checkout")
    provider = models.CharField(_("provider"), max_length=32)
    state = models.CharField(_("state"), max_length=16, choices=State.choices, default=State.CREATING)
    provider_checkout_id = models.CharField(max_length=255, null=True, blank=True, unique=True)
    url = models.URLField(max_length=1000, blank=True)
    provider_payment_id = models.CharField(max_length=255, blank=True)
    amount = models.DecimalField(_("amount"), max_digits=12, decimal_places=2)
    currency = models.CharField(_("currency"), max_length=3)
    error = models.CharField(max_length=500, blank=True)
    refund_state = models.CharField(max_length=16, choices=RefundState.choices, default=RefundState.NONE, blank=True)
    provider_refund_id = models.CharField(max_length=255, blank=True)
    refund_attempts = models.PositiveIntegerField(default=0)
    refund_error = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()

    objects = CheckoutManager()

    class Meta:
        verbose_name = _("checkout")
        constraints = [
            models.CheckConstraint(condition=Q(amount__gte=0), name="checkout_amount_not_negative"),
            models.CheckConstraint(
                condition=Q(state="creating") | Q(state="failed") | Q(provider_checkout_id__isnull=False),
                name="checkout_open_has_provider_id",
            ),
        ]

    def __str__(self):
        return self.provider_checkout_id or f"checkout #{self.pk}"


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

    objects = PaymentEventManager()

    class Meta:
        ordering = ["-received_at", "-pk"]
        verbose_name = _("payment event")

    def __str__(self):
        return f"{self.event_id} {self.type}"
