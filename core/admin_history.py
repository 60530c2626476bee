"""The admin's History page of a tracked row: every event, newest first, whoever made it (core/history.py)."""

from django.contrib import admin
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.template.response import TemplateResponse
from django.utils.translation import gettext as _

from core.admin_actions import DetailActionsMixin
from core.admin_scope import READ, tenant_ids
from core.history import recent_activity, row_history


class RowHistoryMixin:
    """Replaces Django's History page (only what the admin itself logged) with the row's own events."""

    def history_view(self, request, object_id, extra_context=None):
        obj = self.get_object(request, unquote(object_id))  # another tenant's: 404 (core/admin_scope.py)
        if not self.has_view_or_change_permission(request, obj):
            raise PermissionDenied
        context = {
            **self.admin_site.each_context(request),
            "title": _("History: %s") % obj,
            "subtitle": None,
            "object": obj,
            "opts": self.model._meta,
            "entries": row_history(obj),
            **(extra_context or {}),
        }
        return TemplateResponse(request, "admin/lockstep/row_history.html", context)


def recent_activity_view(request):
    """``/admin/activity/``: the newest changes in the tenants the user may see, every path that made them."""
    context = {
        **admin.site.each_context(request),
        "title": _("Recent activity"),
        "subtitle": None,
        "activity": recent_activity(tenant_ids(request, READ)),
    }
    return TemplateResponse(request, "admin/lockstep/activity.html", context)


class RowPagesMixin(DetailActionsMixin, RowHistoryMixin):
    """A tracked row's own pages: its actions as buttons on its page, and its whole history."""
