"""The admin's History page of a tracked row: every event, newest first, whoever made it (core/history.py)."""

from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.template.response import TemplateResponse
from django.utils.translation import gettext as _

from core.history import row_history


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
