import uuid

from django.db import models
from django.db.models import F, Q
from django.db.models.functions import Lower, Now
from django.utils.translation import gettext_lazy as _

from promos.managers import PromoCodeManager, PromoUsageManager, RedemptionSessionManager

MONEY = dict(max_digits=12, decimal_places=2)


class PromoCode(models.Model):
    """A shop's promo code. ``times_used`` always equals the count of its non-voided usages."""

    class BonusType(models.TextChoices):
        FIXED = "fixed", _("fixed amount")
        PERCENTAGE = "percentage", _("percentage")

    tenant = models.ForeignKey("core.Tenant", on_delete=models.CASCADE, related_name="promo_codes")
    code = models.CharField(_("code"), max_length=64)
    bonus_type = models.CharField(_("bonus type"), max_length=16, choices=BonusType.choices)
    bonus_value = models.DecimalField(_("bonus value"), **MONEY)
    max_bonus = models.DecimalField(_("maximum bonus"), null=True, blank=True, **MONEY)
    starts_at = models.DateTimeField(_("starts at"), null=True, blank=True)
    ends_at = models.DateTimeField(_("ends at"), null=True, blank=True)
    total_usage_limit = models.PositiveIntegerField(_("total usage limit"), null=True, blank=True)
    per_customer_limit = models.PositiveIntegerField(_("per-customer limit"), null=True, blank=True)
    times_used = models.PositiveIntegerField(_("times used"), default=0, editable=False)
    is_active = models.BooleanField(_("active"), default=True)
    created_at = models.DateTimeField(_("created at"), db_default=Now(), editable=False)
    updated_at = models.DateTimeField(_("updated at"), db_default=Now(), editable=False)

    objects = PromoCodeManager()

    class Meta:
        ordering = ["tenant", "code"]
        verbose_name = _("promo code")
        verbose_name_plural = _("promo codes")
        constraints = [
            models.UniqueConstraint(Lower("code"), "tenant", name="promo_code_unique_ci_per_tenant"),
            models.CheckConstraint(condition=Q(times_used__gte=0), name="promo_times_used_not_negative"),
            models.CheckConstraint(
                condition=Q(total_usage_limit__isnull=True) | Q(times_used__lte=F("total_usage_limit")),
                name="promo_times_used_within_limit",
            ),
            models.CheckConstraint(condition=Q(bonus_value__gt=0), name="promo_bonus_value_positive"),
            models.CheckConstraint(
                condition=Q(max_bonus__isnull=True) | Q(max_bonus__gt=0), name="promo_max_bonus_positive"
            ),
            models.CheckConstraint(
                condition=~Q(bonus_type="percentage") | Q(bonus_value__lte=100), name="promo_percentage_at_most_100"
            ),
            models.CheckConstraint(condition=Q(bonus_type__in=["fixed", "percentage"]), name="promo_bonus_type_known"),
            models.CheckConstraint(
                condition=Q(starts_at__isnull=True) | Q(ends_at__isnull=True) | Q(ends_at__gt=F("starts_at")),
                name="promo_ends_after_start",
            ),
            models.CheckConstraint(
                condition=Q(total_usage_limit__isnull=True) | Q(total_usage_limit__gt=0),
                name="promo_total_limit_positive",
            ),
            models.CheckConstraint(
                condition=Q(per_customer_limit__isnull=True) | Q(per_customer_limit__gt=0),
                name="promo_customer_limit_positive",
            ),
            models.CheckConstraint(condition=~Q(code=""), name="promo_code_not_blank"),
        ]

    def __str__(self):
        return self.code

    @property
    def usage_display(self):
        limit = "∞" if self.total_usage_limit is None else self.total_usage_limit
        return f"{self.times_used} / {limit}"


class PromoUsage(models.Model):
    """One reserved use of a promo code; voiding it gives the use back (once)."""

    tenant = models.ForeignKey("core.Tenant", on_delete=models.CASCADE, related_name="promo_usages")
    promo = models.ForeignKey(PromoCode, on_delete=models.PROTECT, related_name="usages")
    customer = models.CharField(_("customer"), max_length=255)
    base_amount = models.DecimalField(_("base amount"), **MONEY)
    bonus_amount = models.DecimalField(_("bonus amount"), **MONEY)
    reference = models.CharField(_("reference"), max_length=255, blank=True, default="")
    created_at = models.DateTimeField(_("created at"), db_default=Now(), editable=False)
    voided_at = models.DateTimeField(_("voided at"), null=True, blank=True, editable=False)

    objects = PromoUsageManager()

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = _("promo usage")
        verbose_name_plural = _("promo usages")
        indexes = [
            models.Index(
                fields=["promo", "customer"], condition=Q(voided_at__isnull=True), name="promo_usage_live_by_customer"
            ),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(base_amount__gt=0), name="promo_usage_base_positive"),
            models.CheckConstraint(
                condition=Q(bonus_amount__gte=0) & Q(bonus_amount__lte=F("base_amount")),
                name="promo_usage_bonus_within_amount",
            ),
        ]

    def __str__(self):
        return f"{self.promo_id}:{self.customer}#{self.pk}"


class RedemptionSession(models.Model):
    """A customer-approved allowance a shop may consume exactly once before ``expires_at``."""

    class Status(models.TextChoices):
        PENDING = "pending", _("pending")
        APPROVED = "approved", _("approved")
        REJECTED = "rejected", _("rejected")
        USED = "used", _("used")
        EXPIRED = "expired", _("expired")
        CANCELLED = "cancelled", _("cancelled")

    session_id = models.UUIDField(_("session id"), default=uuid.uuid4, unique=True, editable=False)
    tenant = models.ForeignKey("core.Tenant", on_delete=models.CASCADE, related_name="redemption_sessions")
    customer = models.CharField(_("customer"), max_length=255)
    max_amount = models.DecimalField(_("maximum amount"), **MONEY)
    status = models.CharField(_("status"), max_length=16, choices=Status.choices, default=Status.PENDING)
    secret_hash = models.CharField(max_length=64, editable=False)  # sha256 hex of the approval secret
    created_at = models.DateTimeField(_("created at"), db_default=Now(), editable=False)
    expires_at = models.DateTimeField(_("expires at"))
    approved_at = models.DateTimeField(_("approved at"), null=True, blank=True)
    rejected_at = models.DateTimeField(_("rejected at"), null=True, blank=True)
    cancelled_at = models.DateTimeField(_("cancelled at"), null=True, blank=True)
    used_at = models.DateTimeField(_("used at"), null=True, blank=True)
    used_amount = models.DecimalField(_("used amount"), null=True, blank=True, **MONEY)

    objects = RedemptionSessionManager()

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = _("redemption session")
        verbose_name_plural = _("redemption sessions")
        indexes = [
            models.Index(
                fields=["expires_at"], condition=Q(status__in=["pending", "approved"]), name="redemption_live_expiry"
            ),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(max_amount__gt=0), name="redemption_max_amount_positive"),
            models.CheckConstraint(
                condition=Q(status__in=["pending", "approved", "rejected", "used", "expired", "cancelled"]),
                name="redemption_status_known",
            ),
            models.CheckConstraint(
                condition=(
                    Q(status="used", used_at__isnull=False, used_amount__gt=0, used_amount__lte=F("max_amount"))
                    | (~Q(status="used") & Q(used_at__isnull=True, used_amount__isnull=True))
                ),
                name="redemption_used_iff_used_at",
            ),
            models.CheckConstraint(
                condition=Q(used_at__isnull=True) | Q(used_at__lt=F("expires_at")),
                name="redemption_used_before_expiry",
            ),
        ]

    def __str__(self):
        return str(self.session_id)
