import functools
import zoneinfo
from datetime import timedelta

from django import forms
from django.apps import apps
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.auth import admin as auth_admin
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction
from django.db.models import Q
from django.db.models.functions import Now
from django.forms.models import BaseInlineFormSet
from django.http import HttpResponseRedirect
from django.urls import reverse
from django.utils import timezone
from django.utils.text import format_lazy
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext
from procrastinate import exceptions as procrastinate_exceptions
from procrastinate.contrib.django import admin as procrastinate_admin
from procrastinate.contrib.django.models import ProcrastinateJob
from rest_framework.authtoken import admin as authtoken_admin
from rest_framework.authtoken.models import TokenProxy

from core.admin_actions import (
    ActionsOnlyMixin,
    BadInputMixin,
    carried_version,
    refusal_text,
    row_action,
    seen_version,
)
from core.admin_forms import ChangedFieldsOnlyMixin, DeleteAtSeenVersionMixin, GuardedChangeFormMixin, RefusalMixin
from core.admin_history import RowHistoryMixin
from core.admin_scope import MANAGE_MEMBERS, TenantScopedAdminMixin
from core.exceptions import DeletedMeanwhile, MemberAlreadyExists
from core.models import SENDING_LEFT_AFTER, IdempotencyKey, Membership, Notification, Tenant


class MembershipForm(forms.ModelForm):
    """A member picked by user name: an owner may add a colleague without seeing the users' list
    (which stays for superusers), and a name that is not a user is a field error."""

    user = forms.CharField(label=_("user name"), max_length=150)

    class Meta:
        model = Membership
        fields = ["user", "tenant", "role"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk is not None:  # whose membership it is: shown read-only (MembershipAdmin), never posted
            del self.fields["user"]

    def clean_user(self):
        User = get_user_model()
        try:
            return User.objects.get(**{User.USERNAME_FIELD: self.cleaned_data["user"]})
        except User.DoesNotExist:
            raise forms.ValidationError(_("No user has this name.")) from None

    def clean(self):
        """One membership per user and tenant, said on the user field (the tenant is read-only on a member's
        page and the inline's parent on the tenant's, so Django's own unique check never sees it); two
        owners adding one user at once meet the constraint (MemberAlreadyExists), also on the form."""
        cleaned = super().clean()
        user, tenant = cleaned.get("user"), cleaned.get("tenant")
        tenant_id = tenant.pk if tenant is not None else self.instance.tenant_id
        if user is not None and tenant_id is not None:
            others = Membership.objects.filter(tenant_id=tenant_id, user=user).exclude(pk=self.instance.pk)
            if others.exists():
                self.add_error("user", MemberAlreadyExists.message)
        return cleaned


class ShownMemberForm(forms.ModelForm):
    """A row of the tenant page's members: read-only, carrying the version the page showed."""

    seen_version = forms.CharField(widget=forms.HiddenInput, required=False)

    class Meta:
        model = Membership
        fields = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.initial["seen_version"] = self.instance.version

    def has_changed(self):
        """Never, so a tenant's Save neither saves this row nor logs it as changed (a carried version that
        differs from the row's is what a delete checks, not an edit). The formset saves a changed row in
        full: it would write back the user and role the page read, undoing a colleague's demotion
        committed since, version and all (the database now refuses the version going back)."""
        return False


class MembersAtSeenVersion(BaseInlineFormSet):
    """A ticked delete box removes the member at the version its row showed (``delete_member``): a member a
    colleague changed meanwhile (promoted to owner, say) is refused version_conflict, not removed as they now are;
    a POST without it (a page from before) is refused the same way."""

    def delete_existing(self, obj, commit=True):
        if commit:
            (form,) = [form for form in self.initial_forms if form.instance is obj]
            carried = form.data.get(form.add_prefix("seen_version"), "")
            Membership.objects.delete_member(obj.pk, version=carried_version(carried))


class MembershipInline(TenantScopedAdminMixin, admin.TabularInline):
    """A tenant's members, read-only here: a role is changed on the member's own page, at the version read
    (a tenant's Save would write back every row as the page showed it, undoing a colleague's demotion); a
    member is removed at the version the page showed (``MembersAtSeenVersion``)."""

    model = Membership
    form = ShownMemberForm
    formset = MembersAtSeenVersion
    change_roles = MANAGE_MEMBERS
    fields = ["user", "role", "seen_version"]
    readonly_fields = ["user", "role"]
    show_change_link = True
    extra = 0

    def has_add_permission(self, request, obj=None):
        return False  # NewMembershipInline adds


class NewMembershipInline(TenantScopedAdminMixin, admin.TabularInline):
    """Add members to the tenant: inserts only, so nothing read earlier is written back."""

    model = Membership
    form = MembershipForm
    change_roles = MANAGE_MEMBERS
    fields = ["user", "role"]
    extra = 0
    verbose_name = _("new member")
    verbose_name_plural = _("add members")

    def get_queryset(self, request):
        return super().get_queryset(request).none()


@functools.cache
def time_zones():
    """The IANA zones this server knows, sorted (the tenant form's list)."""
    return sorted(zoneinfo.available_timezones())


@admin.register(Tenant)
class TenantAdmin(GuardedChangeFormMixin, TenantScopedAdminMixin, admin.ModelAdmin):
    """Staff see their tenants; owners rename theirs (only what they changed, at the version they read) and
    manage members; only superusers add or delete tenants."""

    tenant_path = ""
    change_roles = MANAGE_MEMBERS
    list_display = ["name", "slug", "time_zone", "created_at"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    readonly_fields = ["created_at"]
    inlines = [MembershipInline, NewMembershipInline]
    refusal_fields = {"member_exists": None}

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        if db_field.name == "time_zone":  # a list to pick from, not a name to spell (the model validates it too)
            kwargs["widget"] = forms.Select(choices=[(zone, zone) for zone in time_zones()])
        return super().formfield_for_dbfield(db_field, request, **kwargs)

    def guarded_edit(self, request, obj, changes, *, version):
        return Tenant.objects.edit_tenant(obj.pk, version=version, **changes)

    def guarded_create(self, request, form):
        return form.save()

    def save_related(self, request, form, formsets, change):
        """New members first, then the delete boxes: an owner who adds the next owner and removes themselves in
        one Save hands the tenant over (a removal is judged on the members the transaction then has)."""
        added = [formset for formset in formsets if issubclass(formset.form, MembershipForm)]  # NewMembershipInline
        super().save_related(request, form, added + [formset for formset in formsets if formset not in added], change)

    def has_delete_permission(self, request, obj=None):
        # a tenant's deletion takes every booking, code and profile with it: not an owner's call
        return request.user.is_active and request.user.is_superuser


@admin.register(Membership)
class MembershipAdmin(
    RowHistoryMixin, DeleteAtSeenVersionMixin, GuardedChangeFormMixin, TenantScopedAdminMixin, admin.ModelAdmin
):
    """A member's role, written only where the owner changed it and only at the version they read; a member
    removed only at the version the page showed (the delete page, the bulk delete's confirmation)."""

    change_roles = MANAGE_MEMBERS
    refusal_fields = {"member_exists": "user"}
    list_display = ["user", "tenant", "role", "created_at"]
    list_filter = ["role", "tenant"]
    list_select_related = ["user", "tenant"]
    search_fields = ["user__username", "tenant__slug"]
    form = MembershipForm
    actions = ["delete_selected_members"]

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # deletes the rows as they stand: at the version shown instead
        return actions

    def delete_model(self, request, obj):
        Membership.objects.delete_member(obj.pk, version=self.version_seen_on_delete_page(request))

    delete_selected_members = row_action(
        _("Remove selected members"),
        lambda membership: Membership.objects.delete_member(membership.pk, version=seen_version(membership)),
        permissions=["delete"],
        select_related=["user", "tenant"],
        confirm={
            "seen": lambda membership: membership.version,
            "title": _("Remove selected members"),
            "explanation": _(
                "Each member loses access to the tenant. A member changed since this page showed them is refused, "
                "and so is a tenant's last owner."
            ),
            "columns": {
                _("user"): lambda membership: membership.user.get_username(),
                _("tenant"): lambda membership: str(membership.tenant),
                _("role"): lambda membership: membership.get_role_display(),
            },
            "effect": lambda membership: _("removed"),
            "confirm_label": _("Remove these members"),
        },
        describe=lambda membership: (
            _("Member %(user)s of %(tenant)s") % {"user": membership.user.get_username(), "tenant": membership.tenant}
        ),
        done_message=lambda n: ngettext("%(n)d member removed.", "%(n)d members removed.", n) % {"n": n},
    )

    def guarded_edit(self, request, obj, changes, *, version):
        changes.pop("tenant", None)  # a membership never moves to another tenant
        return Membership.objects.edit_member(obj.pk, version=version, **changes)

    def guarded_create(self, request, form):
        return form.save()

    def get_readonly_fields(self, request, obj=None):
        # Whose membership it is, too: the page named the user as it read them, and a Save posted that name
        # back; renamed meanwhile and the name given to another account, the membership moved to that
        # person (the name no longer matched, so it counted as changed). Another person: remove, then add.
        return ["tenant", "user"] if obj is not None else []


@admin.register(IdempotencyKey)
class IdempotencyKeyAdmin(BadInputMixin, ActionsOnlyMixin, admin.ModelAdmin):
    """Read-only: deleting a key still in progress would let its retry run the operation twice
    (``prune_idempotency_keys`` deletes expired ones)."""

    list_display = ["key", "principal", "method", "path", "state", "response_status", "created_at", "expires_at"]
    list_filter = ["state", "method"]
    search_fields = ["key", "principal", "path"]


LEFT_MINUTES = int(SENDING_LEFT_AFTER.total_seconds() // 60)  # said on the send-again page


@admin.register(Notification)
class NotificationAdmin(BadInputMixin, ActionsOnlyMixin, admin.ModelAdmin):
    """What was owed to whom and whether it went: read-only (the worker writes these rows)."""

    list_display = ["kind", "subject", "language", "status", "attempts", "created_at", "claimed_at", "sent_at"]
    list_filter = ["status", "kind", "language"]
    search_fields = ["subject", "recipients"]
    readonly_fields = [field.name for field in Notification._meta.fields]
    actions = ["queue_again", "send_again"]

    queue_again = row_action(
        _("Queue the sending again (pending ones whose job is gone)"),
        lambda notification: Notification.objects.queue_again(notification.pk),
        permissions=["operate"],
        nothing_to_do=_("not pending: nothing to send"),
        done_message=lambda n: ngettext("%(n)d notification queued.", "%(n)d notifications queued.", n) % {"n": n},
    )

    # A row left sending has no job that will ever send it: only an operator, after the mail log, can say.
    send_again = row_action(
        _("Send again (left sending by a worker that stopped)"),
        lambda notification: Notification.objects.send_again(notification.pk),
        permissions=["operate"],
        confirm={
            "title": _("Send again notifications left sending"),
            "explanation": format_lazy(
                _(
                    "Each was taken by a worker that stopped before the mail server answered (or met its row "
                    "busy). The mail server may have taken it first: check the mail log, or the recipient may "
                    "get it twice. Only one taken more than {minutes} minutes ago is sent again."
                ),
                minutes=LEFT_MINUTES,
            ),
            "columns": {
                _("kind"): lambda notification: notification.kind,
                _("about"): lambda notification: notification.subject,
                _("status"): lambda notification: notification.get_status_display(),
                _("claimed at"): lambda notification: notification.claimed_at or "-",
                _("attempts"): lambda notification: notification.attempts,
            },
            "effect": lambda notification: (
                format_lazy(_("sent again, if taken more than {minutes} minutes ago"), minutes=LEFT_MINUTES)
                if notification.status == Notification.Status.SENDING
                else _("nothing: not left sending")
            ),
            "confirm_label": _("Send these again"),
        },
        nothing_to_do=format_lazy(
            _("not left sending for {minutes} minutes: nothing to send again"), minutes=LEFT_MINUTES
        ),
        done_message=lambda n: (
            ngettext("%(n)d notification queued again.", "%(n)d notifications queued again.", n) % {"n": n}
        ),
    )

    def has_operate_permission(self, request):
        return request.user.is_active and request.user.is_superuser  # the queue is shared by every tenant


def retry_jobs(modeladmin, request, queryset):
    """procrastinate's *Retry Job*, one job at a time: a job whose task already has a run waiting (a sweep's
    queueing lock allows one), or that changed since the list was read (finished, retried by a colleague, its
    abort completed), is left as it is and named, where procrastinate's action answered 500 after retrying
    the jobs before it. A job still ``doing`` is retried only where its worker is gone (no heartbeat for
    WORKER_STALLED_AFTER_S, as ``jobs.retry_stalled`` judges): a live worker's run would otherwise run twice at
    once, or end by marking the retry succeeded, and a sweep never overlaps its own run."""
    manager = apps.get_app_config("procrastinate").app.job_manager
    retried, left = 0, []
    gone = Now() - timedelta(seconds=settings.WORKER_STALLED_AFTER_S)
    stalled = Q(status="doing") & (Q(worker__isnull=True) | Q(worker__last_heartbeat__lt=gone))
    running = list(queryset.filter(status="doing").exclude(stalled).order_by("pk").values_list("pk", flat=True))
    for job in queryset.filter(Q(status="failed") | stalled).order_by("pk"):
        try:
            with transaction.atomic():  # a refused UPDATE rolls back alone
                manager.retry_job_by_id(job.id, timezone.now(), job.priority, job.queue_name, job.lock)
        except procrastinate_exceptions.ConnectorException:  # UniqueViolation among them
            left.append(job.pk)
            continue
        if type(job).objects.filter(pk=job.pk, status="todo").exists():
            retried += 1
        else:  # a doing job whose abort was asked is ended (failed), not queued again
            left.append(job.pk)
    if retried:
        modeladmin.message_user(
            request, ngettext("Retried %(n)d job.", "Retried %(n)d jobs.", retried) % {"n": retried}
        )
    if left:
        modeladmin.message_user(
            request,
            _("Left as they are (a run of the same task already waits, or the job changed meanwhile): #%(ids)s.")
            % {"ids": ", #".join(map(str, left))},
            messages.WARNING,
        )
    if running:
        modeladmin.message_user(
            request,
            _("Still running on a live worker, not retried: #%(ids)s.") % {"ids": ", #".join(map(str, running))},
            messages.WARNING,
        )


class JobAdmin(BadInputMixin, procrastinate_admin.ProcrastinateJobAdmin):
    """The job queue's own admin, its retry/cancel/abort actions kept to superusers: the queue is
    shared by every tenant, and procrastinate declares no permission on them."""

    actions = [
        admin.action(permissions=["operate"], description=function.short_description)(
            functools.wraps(function)(functools.partial(retry_jobs if function.__name__ == "retry" else function))
        )
        for function in procrastinate_admin.ProcrastinateJobAdmin.actions
    ]

    def has_operate_permission(self, request):
        return request.user.is_superuser


admin.site.unregister(ProcrastinateJob)
admin.site.register(ProcrastinateJob, JobAdmin)


class PasswordOnlyChangeForm(auth_admin.AdminPasswordChangeForm):
    """Django's password page saves the whole user row as it read it (``user.save()``, after hashing for up to a
    second): a colleague's deactivation committed meanwhile was undone. This one writes the password alone."""

    def save(self, commit=True):
        user = super().save(commit=False)  # hashed (or made unusable) on the instance
        if commit and not type(user)._default_manager.filter(pk=user.pk).update(password=user.password):
            raise DeletedMeanwhile()
        return user


# Django's own user and group pages, and DRF's tokens, with the same guard on their actions and filters.
class UserAdmin(BadInputMixin, ChangedFieldsOnlyMixin, RefusalMixin, auth_admin.UserAdmin):
    """A user's deletion takes their memberships with it: refused (said on the list) where it would leave
    a tenant without an owner. A Save writes only what the operator changed (ChangedFieldsOnlyMixin), and
    the password page only the password."""

    change_password_form = PasswordOnlyChangeForm

    def user_change_password(self, request, id, form_url=""):
        try:
            return super().user_change_password(request, id, form_url)
        except DeletedMeanwhile as refusal:  # deleted after the page read it: nothing written
            self.message_user(request, refusal_text(refusal), messages.ERROR)
            return HttpResponseRedirect(reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_changelist"))


class GroupAdmin(BadInputMixin, ChangedFieldsOnlyMixin, RefusalMixin, auth_admin.GroupAdmin):
    """A Save writes only what the operator changed: a group's name, the permissions added and removed."""


class TokenAdmin(BadInputMixin, authtoken_admin.TokenAdmin):
    """Tokens are made (for a user) and deleted (revoked), never changed: a token's page is view-only.

    DRF's change form saves the token by its key, and Django inserts a row whose UPDATE found nothing:
    a Save of a page opened before a colleague revoked the token brought the revoked key back to life.
    """

    def has_change_permission(self, request, obj=None):
        return False


admin.site.unregister(get_user_model())
admin.site.register(get_user_model(), UserAdmin)
admin.site.unregister(Group)
admin.site.register(Group, GroupAdmin)
admin.site.unregister(TokenProxy)
admin.site.register(TokenProxy, TokenAdmin)
