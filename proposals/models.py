from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _

from proposals.managers import ProposalManager


class Proposal(models.Model):
    """A booking an assistant proposed in a chat session; confirmed (and executed) at most once."""

    class Status(models.TextChoices):
        PENDING = "pending", _("pending")
        CONFIRMED = "confirmed", _("confirmed")  # decided, booking under way in the same transaction
        EXECUTED = "executed", _("executed")
        FAILED = "failed", _("failed")
        REJECTED = "rejected", _("rejected")
        EXPIRED = "expired", _("expired")

    tenant = models.ForeignKey("core.Tenant", on_delete=models.CASCADE, related_name="proposals")
    session_id = models.CharField(_("chat session"), max_length=128)
    package = models.ForeignKey("bookings.Package", on_delete=models.PROTECT, related_name="proposals")
    date = models.DateField(_("date"))
    customer_name = models.CharField(_("customer name"), max_length=200)
    customer_email = models.EmailField(_("customer e-mail"))
    status = models.CharField(_("status"), max_length=16, choices=Status.choices, default=Status.PENDING)
    expires_at = models.DateTimeField(_("expires at"))
    created_at = models.DateTimeField(_("created at"))
    confirmed_at = models.DateTimeField(_("confirmed at"), null=True, blank=True)
    executed_at = models.DateTimeField(_("executed at"), null=True, blank=True)
    rejected_at = models.DateTimeField(_("rejected at"), null=True, blank=True)
    failure_code = models.CharField(_("failure code"), max_length=64, blank=True)
    booking = models.OneToOneField(
        "bookings.Booking", on_delete=models.PROTECT, null=True, blank=True, related_name="proposal"
    )

    objects = ProposalManager()

    class Meta:
        ordering = ["-created_at", "-pk"]
        verbose_name = _("proposal")
        indexes = [models.Index(fields=["tenant", "session_id"], name="proposal_tenant_session")]
        constraints = [
            models.CheckConstraint(
                condition=~Q(status="executed") | Q(booking__isnull=False, executed_at__isnull=False),
                name="proposal_executed_has_booking",
            ),
            models.CheckConstraint(
                condition=Q(booking__isnull=True) | Q(status="executed"), name="proposal_booking_only_when_executed"
            ),
            models.CheckConstraint(
                condition=~Q(status="failed") | ~Q(failure_code=""), name="proposal_failed_has_reason"
            ),
            models.CheckConstraint(
                condition=Q(status="pending") | Q(status="expired") | Q(status="rejected")
                | Q(confirmed_at__isnull=False),
                name="proposal_decided_has_confirmed_at",
            ),
        ]

    def __str__(self):
        return f"#{self.pk} {self.package} {self.date} ({self.status})"
