"""Operator screen for proposals: state changes only through the manager.

The change form writes only the contact fields the operator changed, through
``Proposal.objects.edit_contact`` with the version the form was opened at; status,
booking and timestamps are read-only and never written by the form. The expire action
calls ``Proposal.objects.expire`` per row.
"""

from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from core.admin_actions import row_action
from core.admin_display import badge
from core.admin_forms import GuardedChangeFormMixin
from core.admin_history import RowPagesMixin
from core.admin_scope import TenantScopedAdminMixin
from proposals.models import PROPOSAL_EDITABLE, PROPOSAL_RECORD, Proposal


@admin.register(Proposal)
class ProposalAdmin(RowPagesMixin, GuardedChangeFormMixin, TenantScopedAdminMixin, admin.ModelAdmin):
    list_display = [
        "id",
        "package",
        "date",
        "customer_name",
        "status_badge",
        "expires_at",
        "booking_link",
        "tenant",
    ]  # session_id and failure_code on the detail page (and in search): the list must fit 1366 px
    list_filter = ["status", "date", "tenant", "package"]
    search_fields = ["session_id", "customer_name", "customer_email", "=id"]
    date_hierarchy = "date"
    list_select_related = ["package", "tenant", "booking"]
    readonly_fields = ["tenant", "session_id", "package", "date", *PROPOSAL_RECORD, "booking_link", "version"]
    fields = [*readonly_fields[:4], *PROPOSAL_EDITABLE, *readonly_fields[4:]]
    actions = ["expire_selected"]

    @admin.display(description=_("status"), ordering="status")
    def status_badge(self, proposal):
        return badge(proposal.status, proposal.get_status_display())

    def has_add_permission(self, request):
        return False  # proposals come from the assistant through the API

    def has_delete_permission(self, request, obj=None):
        return False

    def guarded_edit(self, request, obj, changes, *, version):
        # Only contact fields are editable in the form; anything else would be a bug, refused by edit_contact.
        return Proposal.objects.edit_contact(obj.pk, version=version, **changes)

    @admin.display(description=_("booking"), ordering="booking")
    def booking_link(self, proposal):
        if proposal.booking_id is None:
            return "-"
        url = reverse("admin:bookings_booking_change", args=[proposal.booking_id])
        return format_html('<a href="{}">#{} ({})</a>', url, proposal.booking_id, proposal.booking.status)

    expire_selected = row_action(
        _("Expire selected pending proposals"),
        lambda proposal: Proposal.objects.expire(proposal.pk),
        describe=lambda proposal: _("Proposal #%(id)s") % {"id": proposal.pk},
        done_message=lambda n: ngettext("%(n)d proposal expired.", "%(n)d proposals expired.", n) % {"n": n},
    )
