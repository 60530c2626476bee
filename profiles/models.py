from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.db.models.functions import Now
from django.utils.translation import gettext_lazy as _

from core.models import Tenant
from profiles.managers import ProfileAuditLogManager, ProfileManager


class Profile(models.Model):
    """A person in a tenant's family tree. Written only through ``Profile.objects`` verbs."""

    class Sex(models.TextChoices):
        MALE = "male", _("male")
        FEMALE = "female", _("female")

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="profiles", verbose_name=_("tenant"))
    first_name = models.CharField(_("first name"), max_length=100)
    last_name = models.CharField(_("last name"), max_length=100, blank=True, default="")
    sex = models.CharField(_("sex"), max_length=6, choices=Sex.choices)
    birth_date = models.DateField(_("date of birth"), null=True, blank=True)
    death_date = models.DateField(_("date of death"), null=True, blank=True)
    father = models.ForeignKey(
        "self", on_delete=models.PROTECT, null=True, blank=True, related_name="children_of_father",
        verbose_name=_("father"),
    )
    mother = models.ForeignKey(
        "self", on_delete=models.PROTECT, null=True, blank=True, related_name="children_of_mother",
        verbose_name=_("mother"),
    )
    deleted_at = models.DateTimeField(_("deleted at"), null=True, blank=True)
    version = models.PositiveIntegerField(_("version"), default=1)
    created_at = models.DateTimeField(_("created at"), db_default=Now())

    objects = ProfileManager()

    class Meta:
        ordering = ["id"]
        verbose_name = _("profile")
        verbose_name_plural = _("profiles")
        indexes = [models.Index(fields=["tenant", "last_name", "first_name"], name="profile_tenant_name_idx")]
        constraints = [
            # Backstops for rules the manager enforces (and names) first.
            models.CheckConstraint(condition=Q(sex__in=["male", "female"]), name="profile_sex_valid"),
            models.CheckConstraint(condition=Q(version__gte=1), name="profile_version_positive"),
            models.CheckConstraint(
                condition=Q(birth_date__isnull=True) | Q(death_date__isnull=True) | Q(death_date__gte=F("birth_date")),
                name="profile_death_not_before_birth",
            ),
            models.CheckConstraint(
                condition=Q(father__isnull=True) | ~Q(father=F("id")), name="profile_not_own_father"
            ),
            models.CheckConstraint(
                condition=Q(mother__isnull=True) | ~Q(mother=F("id")), name="profile_not_own_mother"
            ),
        ]

    def __str__(self):
        return f"{self.first_name} {self.last_name}".strip()

    @property
    def is_deleted(self):
        return self.deleted_at is not None


class ProfileAuditLog(models.Model):
    """One change of one profile: what it was, what it became, who did it, and whether it was undone."""

    class Action(models.TextChoices):
        CREATE = "create", _("create")
        UPDATE = "update", _("update")
        DELETE = "delete", _("delete")
        RESTORE = "restore", _("restore")
        UNDO = "undo", _("undo")

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="+", verbose_name=_("tenant"))
    profile = models.ForeignKey(Profile, on_delete=models.PROTECT, related_name="history", verbose_name=_("profile"))
    action = models.CharField(_("action"), max_length=8, choices=Action.choices)
    old_data = models.JSONField(_("old data"), default=dict, blank=True)
    new_data = models.JSONField(_("new data"), default=dict, blank=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+",
        verbose_name=_("actor"),
    )
    created_at = models.DateTimeField(_("created at"), db_default=Now())
    undone_at = models.DateTimeField(_("undone at"), null=True, blank=True)
    undone_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+",
        verbose_name=_("undone by"),
    )
    undo_reason = models.TextField(_("undo reason"), blank=True, default="")
    undo_entry = models.OneToOneField(
        "self", on_delete=models.PROTECT, null=True, blank=True, related_name="undoes", verbose_name=_("undo entry"),
    )

    objects = ProfileAuditLogManager()

    class Meta:
        ordering = ["id"]
        verbose_name = _("audit entry")
        verbose_name_plural = _("audit log")
        permissions = [("undo_profileauditlog", "Can undo audit entries")]
        indexes = [
            models.Index(fields=["profile", "id"], name="audit_profile_idx"),
            models.Index(fields=["tenant", "action"], name="audit_tenant_action_idx"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(action__in=["create", "update", "delete", "restore", "undo"]), name="audit_action_valid"
            ),
            # An entry is undone exactly when it links to the undo entry that undid it.
            models.CheckConstraint(
                condition=Q(undone_at__isnull=True, undo_entry__isnull=True)
                | Q(undone_at__isnull=False, undo_entry__isnull=False),
                name="audit_undone_has_undo_entry",
            ),
        ]

    def __str__(self):
        return f"#{self.pk} {self.action} {self.profile_id}"

    @property
    def is_undone(self):
        return self.undone_at is not None
