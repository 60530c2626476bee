"""Operator screen for proposals: state changes only through the manager (the expire action)."""

from django.contrib import admin, messages
from django.urls import reverse
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from core.db import lock_errors_as_conflicts
from core.exceptions import DomainError
from proposals.models import Proposal


@admin.register(Proposal)
class ProposalAdmin(admin.ModelAdmin):
    list_display = ["id", "session_id", "package", "date", "customer_name", "status", "expires_at",
                    "booking_link", "failure_code", "tenant"]
    list_filter = ["status", "date", "tenant", "package"]
    search_fields = ["session_id", "customer_name", "customer_email", "=id"]
    date_hierarchy = "date"
    list_select_related = ["package", "tenant", "booking"]
    readonly_fields = ["tenant", "session_id", "package", "date", "status", "expires_at", "created_at",
                       "confirmed_at", "executed_at", "rejected_at", "failure_code", "booking_link"]
    fields = [*readonly_fields[:4], "customer_name", "customer_email", *readonly_fields[4:]]
    actions = ["expire_selected"]

    def has_add_permission(self, request):
        return False  # proposals come from the assistant through the API

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description=_("booking"), ordering="booking")
    def booking_link(self, proposal):
        if proposal.booking_id is None:
            return "-"
        url = reverse("admin:bookings_booking_change", args=[proposal.booking_id])
        return format_html('<a href="{}">#{} ({})</a>', url, proposal.booking_id, proposal.booking.status)

    @admin.action(description=_("Expire selected pending proposals"), permissions=["change"])
    def expire_selected(self, request, queryset):
        done = 0
        for proposal in queryset.order_by("pk"):
            try:
                with lock_errors_as_conflicts():  # a row busy past lock_timeout is this row's refusal, not a 500
                    Proposal.objects.expire(proposal.pk)
                done += 1
            except DomainError as exc:
                self.message_user(
                    request,
                    _("Proposal #%(id)s: %(error)s") % {"id": proposal.pk, "error": exc.render()},
                    messages.ERROR,
                )
        if done:
            self.message_user(
                request,
                ngettext("%(n)d proposal expired.", "%(n)d proposals expired.", done) % {"n": done},
                messages.SUCCESS,
            )
