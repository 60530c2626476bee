"""Operator screens. Every state change goes through the Profile / ProfileAuditLog managers."""

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from core.exceptions import DomainError
from core.guards import database_refusals
from profiles.managers import PROFILE_FIELDS
from profiles.models import Profile, ProfileAuditLog


def _profile_link(profile_id, label):
    if profile_id is None:
        return "-"
    return format_html('<a href="{}">{}</a>', reverse("admin:profiles_profile_change", args=[profile_id]), label)


class SoftDeletedFilter(admin.SimpleListFilter):
    title = gettext_lazy("deleted")
    parameter_name = "deleted"

    def lookups(self, request, model_admin):
        return [("no", gettext_lazy("live")), ("yes", gettext_lazy("deleted"))]

    def queryset(self, request, queryset):
        if self.value() == "no":
            return queryset.live()
        if self.value() == "yes":
            return queryset.deleted()
        return queryset


class UndoneFilter(admin.SimpleListFilter):
    title = gettext_lazy("undone")
    parameter_name = "undone"

    def lookups(self, request, model_admin):
        return [("yes", gettext_lazy("undone")), ("no", gettext_lazy("not undone"))]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.undone()
        if self.value() == "no":
            return queryset.not_undone()
        return queryset


# The form field a refusal is about (parent errors name theirs via ``exc.parent``); others go on top.
REFUSAL_FIELDS = {"invalid_dates": "death_date", "sex_change_conflict": "sex"}


class ProfileAdminForm(forms.ModelForm):
    # The version the operator read: the manager refuses the save if someone changed the profile since.
    expected_version = forms.IntegerField(widget=forms.HiddenInput, required=False)

    class Meta:
        model = Profile
        fields = ["tenant", *PROFILE_FIELDS]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.fields["expected_version"].initial = self.instance.version

    # Set (on a per-request subclass, see ProfileAdmin.get_form) when the manager refused the save:
    # the form is shown again, bound to the operator's input, with the refusal on the field it concerns.
    refusal = None

    def _post_clean(self):
        # Model.full_clean would compare against the unsaved instance; the manager validates instead.
        if self.refusal is not None:
            field = REFUSAL_FIELDS.get(self.refusal.code) or getattr(self.refusal, "parent", None)
            self.add_error(field if field in self.fields else None, self.refusal.render())


class ProfileAuditLogInline(admin.TabularInline):
    model = ProfileAuditLog
    fk_name = "profile"
    extra = 0
    can_delete = False
    fields = ["entry_link", "action", "old_data", "new_data", "actor", "created_at", "undone_at"]
    readonly_fields = fields
    ordering = ["-id"]
    verbose_name_plural = gettext_lazy("history")

    @admin.display(description=gettext_lazy("entry"))
    def entry_link(self, entry):
        url = reverse("admin:profiles_profileauditlog_change", args=[entry.pk])
        return format_html('<a href="{}">#{}</a>', url, entry.pk)

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Profile)
class ProfileAdmin(admin.ModelAdmin):
    form = ProfileAdminForm
    list_display = ["id", "full_name", "sex", "birth_date", "death_date", "father_link", "mother_link",
                    "tenant", "version", "deleted_at"]
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

    @admin.display(description=gettext_lazy("name"), ordering="last_name")
    def full_name(self, profile):
        return str(profile)

    @admin.display(description=gettext_lazy("father"))
    def father_link(self, profile):
        return _profile_link(profile.father_id, profile.father)

    @admin.display(description=gettext_lazy("mother"))
    def mother_link(self, profile):
        return _profile_link(profile.mother_id, profile.mother)

    def save_model(self, request, obj, form, change):
        """Create or update through the manager, so version, audit and parent rules hold."""
        data = {field: form.cleaned_data.get(field) for field in PROFILE_FIELDS}
        if not change:
            saved = Profile.objects.create_profile(tenant=form.cleaned_data["tenant"], actor=request.user, **data)
        else:
            changed = {field: data[field] for field in PROFILE_FIELDS if field in form.changed_data}
            version = form.cleaned_data.get("expected_version") or obj.version
            saved = Profile.objects.update_profile(
                obj.pk, tenant=obj.tenant_id, version=version, actor=request.user, **changed
            )
        for field in Profile._meta.concrete_fields:  # the admin logs and redirects using ``obj``
            setattr(obj, field.attname, getattr(saved, field.attname))

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change, **kwargs)
        refusal = getattr(request, "_profile_refusal", None)
        return type(form.__name__, (form,), {"refusal": refusal}) if refusal is not None else form

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        try:
            # The admin's own atomic block commits after the manager returned: a lock error at that
            # COMMIT (deferred foreign-key checks) is outside the manager's translation, so map it here.
            with database_refusals():
                return super().changeform_view(request, object_id, form_url, extra_context)
        except DomainError as exc:  # raised by the manager in save_model; the admin's transaction rolled back
            # Render the same POST again: the form is invalid this time (the refusal is its error),
            # so the operator keeps what they typed and sees the localized reason; nothing is saved.
            request._profile_refusal = exc
            return super().changeform_view(request, object_id, form_url, extra_context)

    def has_delete_permission(self, request, obj=None):
        return False  # hard deletes would bypass the audit log; use the soft-delete action

    @admin.action(description=gettext_lazy("Soft-delete selected profiles"), permissions=["change"])
    def soft_delete_selected(self, request, queryset):
        for profile in queryset.order_by("id"):
            self._report(request, profile, lambda p: Profile.objects.soft_delete(
                p.pk, tenant=p.tenant_id, version=p.version, actor=request.user), _("deleted"))

    @admin.action(description=gettext_lazy("Restore selected profiles"), permissions=["change"])
    def restore_selected(self, request, queryset):
        for profile in queryset.order_by("id"):
            self._report(request, profile, lambda p: Profile.objects.restore(
                p.pk, tenant=p.tenant_id, version=p.version, actor=request.user), _("restored"))

    def _report(self, request, profile, operation, done):
        try:
            operation(profile)
        except DomainError as exc:
            self.message_user(request, f"{profile} (#{profile.pk}): {exc.code}: {exc.render()}", messages.ERROR)
        else:
            self.message_user(request, f"{profile} (#{profile.pk}): {done}", messages.SUCCESS)


class UndoReasonForm(forms.Form):
    reason = forms.CharField(label=gettext_lazy("Reason"), max_length=500, widget=forms.Textarea(attrs={"rows": 3}))


@admin.register(ProfileAuditLog)
class ProfileAuditLogAdmin(admin.ModelAdmin):
    list_display = ["id", "created_at", "action", "profile_link", "actor", "undone_at", "undone_by", "tenant"]
    list_filter = ["action", UndoneFilter, "tenant"]
    list_select_related = ["profile", "actor", "undone_by", "tenant"]
    search_fields = ["=id", "profile__first_name", "profile__last_name", "undo_reason"]
    date_hierarchy = "created_at"
    readonly_fields = ["tenant", "profile_link", "action", "old_data", "new_data", "actor", "created_at",
                       "undone_at", "undone_by", "undo_reason", "undo_entry", "undoes_link"]
    fields = readonly_fields
    actions = ["undo_selected"]

    @admin.display(description=gettext_lazy("profile"), ordering="profile_id")
    def profile_link(self, entry):
        return _profile_link(entry.profile_id, entry.profile)

    @admin.display(description=gettext_lazy("undoes"))
    def undoes_link(self, entry):
        undone = getattr(entry, "undoes", None)
        if undone is None:
            return "-"
        url = reverse("admin:profiles_profileauditlog_change", args=[undone.pk])
        return format_html('<a href="{}">#{}</a>', url, undone.pk)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_undo_permission(self, request):
        return request.user.has_perm("profiles.undo_profileauditlog")

    @admin.action(description=gettext_lazy("Undo selected changes"), permissions=["undo"])
    def undo_selected(self, request, queryset):
        """Ask for a reason on a confirmation page, then undo each entry and report its result."""
        entries = list(queryset.select_related("profile").order_by("id"))
        form = UndoReasonForm(request.POST if "apply" in request.POST else None)
        if form.is_bound and form.is_valid():
            for entry in entries:
                try:
                    ProfileAuditLog.objects.undo(
                        entry.pk, tenant=entry.tenant_id, actor=request.user, reason=form.cleaned_data["reason"]
                    )
                except DomainError as exc:
                    self.message_user(request, f"#{entry.pk}: {exc.code}: {exc.render()}", messages.ERROR)
                else:
                    self.message_user(request, _("#%(entry)s: undone.") % {"entry": entry.pk}, messages.SUCCESS)
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": _("Undo selected changes"),
            "opts": self.model._meta,
            "entries": entries,
            "form": form,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/profiles/profileauditlog/undo_selected.html", context)
