from django.conf import settings
from django.db import models
from django.db.models.functions import Now
from django.utils.translation import gettext_lazy as _

from core.guards import guarded
from core.managers import IdempotencyKeyManager, TenantQuerySet


class Tenant(models.Model):
    """A business using Lockstep: its packages, codes, sessions and family trees belong to it."""

    name = models.CharField(_("name"), max_length=200)
    slug = models.SlugField(_("slug"), max_length=64, unique=True)
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, through="Membership", related_name="tenants", blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = TenantQuerySet.as_manager()

    class Meta:
        ordering = ["slug"]
        verbose_name = _("tenant")
        verbose_name_plural = _("tenants")

    def __str__(self):
        return self.name


class Membership(models.Model):
    class Role(models.TextChoices):
        OWNER = "owner", _("owner")
        STAFF = "staff", _("staff")
        API = "api", _("API client")

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.STAFF)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = _("membership")
        verbose_name_plural = _("memberships")
        constraints = [models.UniqueConstraint(fields=["tenant", "user"], name="membership_unique_user_per_tenant")]

    def __str__(self):
        return f"{self.user} @ {self.tenant}"


class IdempotencyKey(models.Model):
    """The first answer to a POST sent with an Idempotency-Key, kept for replay."""

    class State(models.TextChoices):
        IN_PROGRESS = "in_progress", _("in progress")
        COMPLETED = "completed", _("completed")

    principal = models.CharField(max_length=100)  # "user:<id>" or "anonymous:<sha256 of the path>"
    key = models.CharField(max_length=255)
    method = models.CharField(max_length=10)
    path = models.CharField(max_length=500)
    fingerprint = models.CharField(max_length=64)  # sha256 of method, path and body
    state = models.CharField(max_length=16, choices=State.choices, default=State.IN_PROGRESS)
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    response_body = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField(db_index=True)

    objects = IdempotencyKeyManager()

    class Meta:
        verbose_name = _("idempotency key")
        verbose_name_plural = _("idempotency keys")
        constraints = [
            models.UniqueConstraint(fields=["principal", "key"], name="idempotency_key_unique_per_principal"),
        ]

    def __str__(self):
        return f"{self.principal} {self.key}"


class ThrottleBucketManager(models.Manager):
    """Kept beside its model: a throttle bucket is infrastructure of the API, not a domain aggregate."""

    @guarded
    def prune(self):
        """Delete buckets whose theoretical arrival time has passed; return how many went.

        Locks: each lapsed bucket's row (one DELETE; an upsert racing it either waits and
        inserts afresh, or wins and the DELETE skips the row, whose tat is then in the future).
        """
        deleted, _ = self.filter(tat__lt=Now()).delete()
        return deleted


class ThrottleBucket(models.Model):
    """One rate-limit bucket: the GCRA "theoretical arrival time" of the next request for a key.

    Why a table and not Django's cache: DRF's SimpleRateThrottle reads the request
    history, then writes it back, and Django's DatabaseCache has no atomic increment,
    so concurrent requests overwrite each other's counts and a storm of 50 passes a
    limit of 10. Here each request is ONE ``INSERT ... ON CONFLICT DO UPDATE ... WHERE``
    (core/api/throttles.py): the row lock taken by the upsert orders concurrent
    requests for the same key, and the WHERE decides each one against the committed
    value. A bucket whose ``tat`` has passed means "full", the same as no row, so
    ``manage.py prune_idempotency_keys`` deletes it. The table is UNLOGGED (see its
    migration): losing it in a crash only forgives the requests counted so far.
    """

    key = models.TextField(primary_key=True)  # "throttle_<scope>_<ident>"
    tat = models.DateTimeField()  # theoretical arrival time; at most one period ahead of now

    objects = ThrottleBucketManager()

    class Meta:
        verbose_name = _("throttle bucket")
        verbose_name_plural = _("throttle buckets")

    def __str__(self):
        return self.key
