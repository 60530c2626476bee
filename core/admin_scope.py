"""The admin, scoped to the tenants a staff user is a member of, with what their role allows.

Roles (``Membership.role``): a **viewer** reads; **staff** (a manager) also changes rows and runs
the money actions; an **owner** also manages the tenant's members. An ``api`` membership is for
API clients and gives no admin access. Superusers see and change everything. For a tenant-scoped
model admin the role is the permission (Django's per-model permissions are not consulted), so
adding a membership is all an operator needs.

Everything an admin page reads goes through ``get_queryset``, so lists, search, filters (tenant
and other related filters list only what the rows use), actions, autocompletes (Django asks the
related model's admin) and change pages are scoped; another tenant's object answers 404, exactly
like one that does not exist.
"""

from django.contrib import admin, messages
from django.contrib.admin import widgets
from django.core.exceptions import FieldDoesNotExist, ValidationError
from django.http import Http404
from django.utils.translation import ngettext

from core.admin_actions import BadInputMixin
from core.models import Membership, Tenant

READ = frozenset({Membership.Role.OWNER, Membership.Role.STAFF, Membership.Role.VIEWER})
CHANGE = frozenset({Membership.Role.OWNER, Membership.Role.STAFF})
MANAGE_MEMBERS = frozenset({Membership.Role.OWNER})


def tenant_ids(request, roles):
    """The ids of the tenants where the request's user has one of ``roles`` (None: a superuser, all of them)."""
    user = request.user
    if user.is_superuser:
        return None
    cache = request.__dict__.setdefault("_lockstep_admin_roles", {})
    if roles not in cache:
        cache[roles] = frozenset(
            Membership.objects.filter(user_id=user.pk, role__in=roles).values_list("tenant_id", flat=True)
        )
    return cache[roles]


class TenantScopedAdminMixin(BadInputMixin):
    """A model admin (or inline) whose rows belong to a tenant through ``tenant_path`` (a lookup:
    "tenant", "booking__tenant", or "" for the Tenant model itself).

    Put it last before ``admin.ModelAdmin``: it stands in for Django's per-model permission checks,
    so the mixins before it (read-only, guarded saves) keep narrowing what it allows.
    """

    tenant_path = "tenant"
    change_roles = CHANGE  # what changing a row (and running an action on it) takes

    def _lookup(self):
        return f"{self.tenant_path}__in" if self.tenant_path else "pk__in"

    def _tenant_of(self, obj):
        if isinstance(obj, Tenant):
            return obj.pk
        if not isinstance(obj, self.model):  # an inline is asked about its parent object
            return obj.tenant_id
        for part in filter(None, self.tenant_path.split("__")):
            obj = getattr(obj, part)
            if obj is None:  # e.g. a payment event that matched no booking: no tenant's
                return None
        return obj.pk

    def _allowed(self, request, roles, obj=None):
        if not (request.user.is_active and request.user.is_staff):
            return False
        ids = tenant_ids(request, roles)
        if ids is None:
            return True
        return bool(ids) if obj is None else self._tenant_of(obj) in ids

    # --- what the user may see --------------------------------------------------------------------

    def get_queryset(self, request):
        queryset = super().get_queryset(request)
        ids = tenant_ids(request, READ)
        return queryset if ids is None else queryset.filter(**{self._lookup(): ids})

    def get_object(self, request, object_id, from_field=None):
        obj = super().get_object(request, object_id, from_field)
        if obj is None:  # another tenant's, or none at all: the same answer
            raise Http404
        return obj

    def get_list_filter(self, request):
        """A related filter lists only what the (scoped) rows use, never every tenant or package."""
        return [
            (item, admin.RelatedOnlyFieldListFilter) if isinstance(item, str) and self._is_relation(item) else item
            for item in super().get_list_filter(request)
        ]

    def _is_relation(self, name):
        try:
            return self.model._meta.get_field(name).is_relation
        except FieldDoesNotExist:  # a lookup through a relation ("checkout__refund_state"): as declared
            return False

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        """Choices limited to the tenants where the user may change, and to those tenants' rows; an id box
        (``raw_id_fields``) names only a row among those choices."""
        ids = tenant_ids(request, self.change_roles)
        if ids is not None:
            related = db_field.related_model
            if related is Tenant:
                kwargs["queryset"] = Tenant.objects.filter(pk__in=ids)
            elif any(field.name == "tenant" for field in related._meta.fields):
                kwargs["queryset"] = related._default_manager.filter(tenant_id__in=ids)
        formfield = super().formfield_for_foreignkey(db_field, request, **kwargs)
        widget = getattr(formfield, "widget", None)
        if "queryset" in kwargs and isinstance(widget, widgets.ForeignKeyRawIdWidget):
            formfield.widget = ScopedRawIdWidget(
                widget.rel, widget.admin_site, choices=kwargs["queryset"], attrs=widget.attrs, using=widget.db
            )
        return formfield

    # --- what the user may do: the role, in place of Django's per-model permissions ---------------

    def has_module_permission(self, request):
        return self._allowed(request, READ)

    def has_view_permission(self, request, obj=None):
        return self._allowed(request, READ, obj)

    def has_change_permission(self, request, obj=None):
        return self._allowed(request, self.change_roles, obj)

    def has_add_permission(self, request, *args):  # an inline is asked with its parent object
        if not self.tenant_path:  # a new tenant: superusers only
            return request.user.is_active and request.user.is_superuser
        return self._allowed(request, self.change_roles)

    def has_delete_permission(self, request, obj=None):
        return self._allowed(request, self.change_roles, obj)

    def response_action(self, request, queryset):
        """An action runs only on the rows of tenants where the user may change; the others are named."""
        ids = tenant_ids(request, self.change_roles)
        if ids is not None and self.selection_is_row_ids(request):  # else BadInputMixin answers it, unfiltered
            selected = request.POST.getlist(admin.helpers.ACTION_CHECKBOX_NAME)
            left_alone = self.get_queryset(request).filter(pk__in=selected).exclude(**{self._lookup(): ids})
            request.lockstep_left_alone = set(left_alone.values_list("pk", flat=True))
            read_only = len(request.lockstep_left_alone)
            if read_only:
                message = ngettext(
                    "%(n)d selected row is in a tenant you may only view: left alone.",
                    "%(n)d selected rows are in tenants you may only view: left alone.",
                    read_only,
                ) % {"n": read_only}
                self.message_user(request, message, messages.WARNING)
            queryset = queryset.filter(**{self._lookup(): ids})
        return super().response_action(request, queryset)


class ScopedRawIdWidget(widgets.ForeignKeyRawIdWidget):
    """Django's id box, whose name beside the id is looked up among the field's choices only.

    Django's looks the id up among all rows: ``?father=<id>`` on an add page named any tenant's profile
    to a member of another, one id at a time.
    """

    def __init__(self, rel, admin_site, *, choices, **kwargs):
        super().__init__(rel, admin_site, **kwargs)
        self.scope = choices  # not ``choices``: the form field sets that attribute on its widget

    def label_and_url_for_value(self, value):
        key = self.rel.get_related_field().name
        try:
            if not self.scope.filter(**{key: value}).exists():
                return "", ""
        except (ValueError, TypeError, ValidationError):
            return "", ""
        return super().label_and_url_for_value(value)
