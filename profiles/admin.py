"""Operator screens. Every state change goes through the Profile / ProfileAuditLog managers."""

from urllib.parse import urlencode

from django import forms
from django.contrib import admin
from django.contrib.admin.utils import unquote
from django.urls import reverse
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from core.admin_actions import ActionsOnlyMixin, DetailActionsMixin, row_action, seen_version
from core.admin_filters import queryset_filter
from core.admin_forms import GuardedChangeFormMixin
from core.admin_history import RowPagesMixin
from core.admin_scope import TenantScopedAdminMixin
from profiles.exceptions import UNDO_REASON_MAX_LENGTH
from profiles.managers import PROFILE_FIELDS
from profiles.models import AUDIT_RECORD, Profile, ProfileAuditLog


def _profile_label(profile):
    return f"{profile} (#{profile.pk})"


def _restore_link(refusal):
    """For an undo refused because a parent is deleted: name that parent and link to restoring it."""
    profile_id = refusal.params.get("profile_id") if refusal.code == "parent_deleted" else None
    parent = Profile.objects.filter(pk=profile_id).first() if profile_id else None
    if parent is None:
        return None
    url = reverse("admin:profiles_profile_changelist") + "?" + urlencode({"deleted": "yes", "q": parent.pk})
    return format_html('<a href="{}">{}</a>', url, _("Restore %(name)s first") % {"name": _profile_label(parent)})


# What a confirmation page shows of each profile before a delete or restore.
PROFILE_COLUMNS = {
    _("profile"): _profile_label,
    _("birth date"): lambda p: p.birth_date or "-",
    _("deleted at"): lambda p: p.deleted_at or "-",
}


def _profile_link(profile_id, label):
    if profile_id is None:
        return "-"
    return format_html('<a href="{}">{}</a>', reverse("admin:profiles_profile_change", args=[profile_id]), label)


SoftDeletedFilter = queryset_filter(
    _("deleted"), "deleted", {"no": (_("live"), "live"), "yes": (_("deleted"), "deleted")}
)
UndoneFilter = queryset_filter(
    _("undone"), "undone", {"yes": (_("undone"), "undone"), "no": (_("not undone"), "not_undone")}
)


# The form field a refusal is about (parent errors name theirs: ``exc.field`` is father or mother);
# others go on top.
REFUSAL_FIELDS = {"invalid_dates": "death_date", "sex_change_conflict": "sex"}


class ProfileAdminForm(forms.ModelForm):
    """Profile fields; GuardedChangeFormMixin adds the hidden ``expected_version`` and the refusal."""

    class Meta:
        model = Profile
        fields = ["tenant", *PROFILE_FIELDS]

    def _post_clean(self):
        # Neither construct_instance nor Model.full_clean: the instance stays as read (the mixin sends
        # only the changed fields to the manager), and the manager validates against the locked row.
        pass


class ProfileAuditLogInline(ActionsOnlyMixin, TenantScopedAdminMixin, admin.TabularInline):
    """The profile's history, read-only: entries change only through the undo action."""

    model = ProfileAuditLog
    fk_name = "profile"
    extra = 0
    fields = ["entry_link", "action", "old_data", "new_data", "actor", "created_at", "undone_at"]
    readonly_fields = fields
    ordering = ["-id"]
    verbose_name_plural = _("history")

    @admin.display(description=_("entry"))
    def entry_link(self, entry):
        url = reverse("admin:profiles_profileauditlog_change", args=[entry.pk])
        return format_html('<a href="{}">#{}</a>', url, entry.pk)


def _profile_action(description, operation, *, done, **confirm):
    """An action on each selected profile at the version the operator saw: ``operation(pk, tenant=,
    version=, actor=)`` (soft delete, restore), asked first, each row reported code first. The
    confirmation page carries each row's version (``seen``): a profile changed since the page was
    shown is refused version_conflict, not acted on."""
    return row_action(
        description,
        lambda p, actor: operation(p.pk, tenant=p.tenant_id, version=seen_version(p), actor=actor),
        by_operator=True,
        confirm={**confirm, "columns": PROFILE_COLUMNS, "seen": lambda p: p.version},
        describe=_profile_label,
        done_each=lambda p, _outcome: f"{_profile_label(p)}: {done}",
        code_first=True,
    )


@admin.register(Profile)
class ProfileAdmin(RowPagesMixin, GuardedChangeFormMixin, TenantScopedAdminMixin, admin.ModelAdmin):
    """Add and change go through the manager: only the changed fields, with the version the form was opened at.

    A stale form (someone changed the profile since it was opened), a missing version, a
    parent rule or a held lock comes back with the operator's input and the localized
    refusal (on the father/mother, date of death or sex field when it concerns one);
    nothing is written.
    """

    form = ProfileAdminForm
    refusal_fields = REFUSAL_FIELDS
    list_display = [
        "id",
        "full_name",
        "sex",
        "birth_date",
        "death_date",
        "father_link",
        "mother_link",
        "tenant",
        "version",
        "deleted_at",
    ]
    list_display_links = ["id", "full_name"]
    list_filter = [SoftDeletedFilter, "sex", "tenant"]
    list_select_related = ["tenant", "father", "mother"]
    search_fields = ["first_name", "last_name", "=id"]
    raw_id_fields = ["father", "mother"]
    readonly_fields = ["version", "deleted_at", "created_at"]
    date_hierarchy = "created_at"
    inlines = [ProfileAuditLogInline]
    actions = ["soft_delete_selected", "restore_selected"]

    def get_fieldsets(self, request, obj=None):
        main = [*PROFILE_FIELDS, "expected_version"]
        if obj is None:
            main.insert(0, "tenant")
        return [(None, {"fields": main}), (_("state"), {"fields": ["version", "deleted_at", "created_at"]})]

    def get_readonly_fields(self, request, obj=None):
        return [*self.readonly_fields, "tenant"] if obj else self.readonly_fields

    @admin.display(description=_("name"), ordering="last_name")
    def full_name(self, profile):
        if profile.deleted_at is not None:  # a soft-deleted profile must not look live
            return format_html("<del>{}</del> ({})", str(profile), _("deleted"))
        return str(profile)

    @admin.display(description=_("father"))
    def father_link(self, profile):
        return _profile_link(profile.father_id, profile.father)

    @admin.display(description=_("mother"))
    def mother_link(self, profile):
        return _profile_link(profile.mother_id, profile.mother)

    def guarded_create(self, request, form):
        """Create through the manager (parents locked and checked, ``create`` entry written)."""
        data = {field: form.cleaned_data.get(field) for field in PROFILE_FIELDS}
        return Profile.objects.create_profile(tenant=form.cleaned_data["tenant"], actor=request.user, **data)

    def guarded_edit(self, request, obj, changes, *, version):
        """Write only the changed fields, refused (version_conflict) unless the profile is still at ``version``."""
        fields = {field: value for field, value in changes.items() if field in PROFILE_FIELDS}
        return Profile.objects.update_profile(
            obj.pk, tenant=obj.tenant_id, version=version, actor=request.user, **fields
        )

    def has_delete_permission(self, request, obj=None):
        return False  # hard deletes would bypass the audit log; use the soft-delete action

    def history_view(self, request, object_id, extra_context=None):
        """One page: every change of the row, then its audit entries (reasons, undo) linked."""
        profile = self.get_object(request, unquote(object_id))  # a garbled id, or another tenant's: 404
        entries = ProfileAuditLog.objects.select_related("actor").filter(profile=profile).order_by("-id")[:100]
        return super().history_view(request, object_id, {**(extra_context or {}), "audit_entries": entries})

    soft_delete_selected = _profile_action(
        _("Soft-delete selected profiles"),
        Profile.objects.soft_delete,
        title=_("Soft-delete selected profiles"),
        explanation=_(
            "Each profile is hidden from the tree and recorded in its history (restore or undo brings it "
            "back). A profile with living children is refused."
        ),
        effect=lambda p: _("nothing: already deleted") if p.deleted_at else _("deleted"),
        confirm_label=_("Delete these profiles"),
        done=_("deleted"),
    )

    restore_selected = _profile_action(
        _("Restore selected profiles"),
        Profile.objects.restore,
        title=_("Restore selected profiles"),
        explanation=_("Each profile comes back into the tree, recorded in its history."),
        effect=lambda p: _("restored") if p.deleted_at else _("nothing: not deleted"),
        confirm_label=_("Restore these profiles"),
        done=_("restored"),
    )


class UndoReasonForm(forms.Form):
    reason = forms.CharField(
        label=_("Reason"), max_length=UNDO_REASON_MAX_LENGTH, widget=forms.Textarea(attrs={"rows": 3})
    )


@admin.register(ProfileAuditLog)
class ProfileAuditLogAdmin(DetailActionsMixin, ActionsOnlyMixin, TenantScopedAdminMixin, admin.ModelAdmin):
    """The audit log, read-only; the undo action (its own permission) calls the manager per entry."""

    list_display = ["id", "created_at", "action", "profile_link", "actor", "undone_at", "undone_by", "tenant"]
    list_filter = ["action", UndoneFilter, "tenant"]
    list_select_related = ["profile", "actor", "undone_by", "tenant"]
    search_fields = ["=id", "profile__first_name", "profile__last_name", "undo_reason"]
    date_hierarchy = "created_at"
    readonly_fields = ["tenant", "profile_link", *AUDIT_RECORD, "undoes_link"]
    fields = readonly_fields
    actions = ["undo_selected"]

    @admin.display(description=_("profile"), ordering="profile_id")
    def profile_link(self, entry):
        return _profile_link(entry.profile_id, entry.profile)

    @admin.display(description=_("undoes"))
    def undoes_link(self, entry):
        undone = getattr(entry, "undoes", None)
        if undone is None:
            return "-"
        url = reverse("admin:profiles_profileauditlog_change", args=[undone.pk])
        return format_html('<a href="{}">#{}</a>', url, undone.pk)

    def has_undo_permission(self, request):
        return self._allowed(request, self.change_roles)  # a manager or owner (core/admin_scope.py)

    undo_selected = row_action(
        _("Undo selected changes"),
        lambda entry, actor, reason: ProfileAuditLog.objects.undo(
            entry.pk, tenant=entry.tenant_id, actor=actor, reason=reason
        ),
        permissions=["undo"],
        by_operator=True,
        select_related=["profile"],
        confirm={
            "title": _("Undo selected changes"),
            "explanation": _(
                "These changes will be undone, each on its own; any that cannot be undone is reported with the reason."
            ),
            "columns": {
                "#": lambda entry: entry.pk,
                _("action"): lambda entry: entry.get_action_display(),
                _("profile"): lambda entry: entry.profile,
                _("old data"): lambda entry: entry.old_data,
                _("new data"): lambda entry: entry.new_data,
                _("undone at"): lambda entry: entry.undone_at or "-",
            },
            "effect": lambda entry: _("nothing: already undone") if entry.undone_at else _("undone"),
            "confirm_label": _("Undo these changes"),
            "form": UndoReasonForm,
        },
        describe=lambda entry: f"#{entry.pk}",
        done_each=lambda entry, _outcome: _("#%(entry)s: undone.") % {"entry": entry.pk},
        remedy=_restore_link,
        code_first=True,
    )
