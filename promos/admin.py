"""Operator screens. State changes only through actions that call the managers."""

from urllib.parse import urlencode

from django import forms
from django.contrib import admin
from django.urls import reverse
from django.utils import formats
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from core.admin_actions import ActionsOnlyMixin, row_action
from core.admin_display import badge
from core.admin_filters import queryset_filter
from core.admin_forms import GuardedChangeFormMixin
from core.admin_history import RowPagesMixin
from core.admin_scope import TenantScopedAdminMixin
from promos.choices import OPEN_STATUSES
from promos.managers import PROMO_EDITABLE, PROMO_TERMS
from promos.models import SESSION_RECORD, USAGE_RECORD, PromoCode, PromoUsage, RedemptionSession

PromoStateFilter = queryset_filter(
    _("state"),
    "state",
    {
        "live": (_("live"), "live"),
        "inactive": (_("inactive"), "inactive"),
        "not_started": (_("not started"), "not_started"),
        "expired": (_("expired"), "expired"),
        "exhausted": (_("exhausted"), "exhausted"),
    },
)


# The form field a manager refusal concerns (others are shown above the form).
REFUSAL_FIELDS = {"promo_code_taken": "code", "promo_limit_below_usage": "total_usage_limit"}


class PromoCodeAdminForm(forms.ModelForm):
    class Meta:
        model = PromoCode
        fields = ["tenant", *PROMO_TERMS]  # activation has its own guarded actions


@admin.register(PromoCode)
class PromoCodeAdmin(RowPagesMixin, GuardedChangeFormMixin, TenantScopedAdminMixin, admin.ModelAdmin):
    """Codes: the change form writes only what the operator changed, through ``update_code``.

    A plain ``obj.save()`` would write back the ``times_used`` (and the limit, the
    window...) this form loaded, undoing every redeem, deactivation or API edit made
    while the operator was editing. The form carries the version it was opened at; a
    stale one comes back with version_conflict and the operator's input, nothing written.
    ``is_active`` changes through the (de)activate actions.
    """

    form = PromoCodeAdminForm
    refusal_fields = REFUSAL_FIELDS
    list_display = [
        "code",
        "tenant",
        "bonus_type",
        "bonus_value",
        "max_bonus",
        "usage",
        "per_customer_limit",
        "is_active",
        "starts_at",
        "ends_at",
    ]
    list_filter = ["is_active", PromoStateFilter, "bonus_type", "tenant"]
    search_fields = ["code", "tenant__slug"]
    date_hierarchy = "created_at"
    readonly_fields = ["times_used", "is_active", "version", "created_at", "updated_at"]
    list_select_related = ["tenant"]
    actions = ["deactivate_selected", "activate_selected"]

    def get_readonly_fields(self, request, obj=None):
        return [*self.readonly_fields, "tenant", "recent_usages"] if obj is not None else self.readonly_fields

    @admin.display(description=_("usages"))
    def recent_usages(self, promo):
        """The code's newest usages on its page (a read-only list, not a formset: nothing to post)."""
        usages = promo.usages.order_by("-created_at")[:20]
        rows = format_html_join(
            "",
            '<tr><td><a href="{}">#{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>',
            (
                (
                    reverse("admin:promos_promousage_change", args=[u.pk]),
                    u.pk,
                    u.customer,
                    u.base_amount,
                    u.bonus_amount,
                    formats.localize(u.created_at),
                    _("voided") if u.voided_at else "",
                )
                for u in usages
            ),
        )
        link = reverse("admin:promos_promousage_changelist") + "?" + urlencode({"q": promo.code})
        return format_html('<table>{}</table><a href="{}">{}</a>', rows, link, _("All usages of this code"))

    def guarded_edit(self, request, obj, changes, *, version):
        changes.pop("tenant", None)  # read-only on change: a code never moves to another shop
        return PromoCode.objects.update_code(obj.pk, tenant=obj.tenant, version=version, **changes)

    def guarded_create(self, request, form):
        fields = {name: value for name, value in form.cleaned_data.items() if name in PROMO_EDITABLE}
        return PromoCode.objects.create_code(tenant=form.cleaned_data["tenant"], **fields)

    def get_actions(self, request):
        # The bulk delete is a plain queryset.delete(): no row lock, so a usage committed meanwhile
        # failed the deferred foreign key at COMMIT. Delete one code at a time (delete_code below).
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    def delete_model(self, request, obj):
        # A refusal (promo_in_use: a usage just arrived, resource_locked, promo_not_found) is reported
        # on the list by the mixin's delete_view.
        PromoCode.objects.delete_code(obj.pk, tenant=obj.tenant)

    @admin.display(description=_("used / limit"), ordering="times_used")
    def usage(self, promo):
        return promo.usage_display

    deactivate_selected = row_action(
        _("Deactivate selected promo codes"),
        lambda promo: PromoCode.objects.set_active(promo.pk, tenant=promo.tenant, active=False),
        confirm={
            "title": _("Deactivate selected promo codes"),
            "explanation": _("Customers can no longer redeem these codes; uses already made stay as they are."),
            "columns": {
                _("code"): lambda promo: promo.code,
                _("times used"): lambda promo: promo.times_used,
                _("total usage limit"): lambda promo: promo.total_usage_limit or "-",
                _("active"): lambda promo: _("yes") if promo.is_active else _("no"),
            },
            "effect": lambda promo: _("deactivated") if promo.is_active else _("nothing: already inactive"),
            "confirm_label": _("Deactivate these codes"),
        },
        done_each=lambda promo, _outcome: _("%(code)s: deactivated.") % {"code": promo.code},
        done_message=lambda n: (
            ngettext("Deactivated %(n)d promo code.", "Deactivated %(n)d promo codes.", n) % {"n": n}
        ),
    )

    activate_selected = row_action(
        _("Activate selected promo codes"),
        lambda promo: PromoCode.objects.set_active(promo.pk, tenant=promo.tenant, active=True),
        done_message=lambda n: ngettext("Activated %(n)d promo code.", "Activated %(n)d promo codes.", n) % {"n": n},
    )


VoidedFilter = queryset_filter(_("voided"), "voided", {"no": (_("live"), "live"), "yes": (_("voided"), "voided")})


@admin.register(PromoUsage)
class PromoUsageAdmin(RowPagesMixin, ActionsOnlyMixin, TenantScopedAdminMixin, admin.ModelAdmin):
    list_display = ["id", "promo", "tenant", *USAGE_RECORD]
    list_filter = [VoidedFilter, "tenant"]
    search_fields = ["customer", "reference", "promo__code"]
    date_hierarchy = "created_at"
    list_select_related = ["promo", "tenant"]
    readonly_fields = ["tenant", "promo", *USAGE_RECORD]
    actions = ["void_selected"]

    void_selected = row_action(
        _("Void selected usages (give the use back)"),
        lambda usage: PromoUsage.objects.void(usage.pk, tenant=usage.tenant),
        select_related=["promo"],
        confirm={
            "title": _("Void selected usages"),
            "explanation": _(
                "Each use is given back to its code (it can be redeemed again); the usage stays, marked voided."
            ),
            "columns": {
                _("usage"): lambda usage: usage.pk,
                _("code"): lambda usage: usage.promo.code,
                _("customer"): lambda usage: usage.customer,
                _("base amount"): lambda usage: usage.base_amount,
                _("bonus amount"): lambda usage: usage.bonus_amount,
            },
            "effect": lambda usage: (
                _("nothing: already voided")
                if usage.voided_at
                else _("voided: %(code)s goes back to %(n)d use(s)")
                % {"code": usage.promo.code, "n": usage.promo.times_used - 1}
            ),
            "confirm_label": _("Void these usages"),
        },
        done_each=lambda usage, _outcome: (
            _("%(usage)s: voided; the use went back to %(code)s.") % {"usage": usage, "code": usage.promo.code}
        ),
        done_message=lambda n: ngettext("Voided %(n)d usage.", "Voided %(n)d usages.", n) % {"n": n},
    )


SessionLiveFilter = queryset_filter(
    _("expiry"),
    "expiry",
    {"open": (_("open (not expired)"), "open"), "overdue": (_("past expiry, not swept yet"), "overdue")},
)


@admin.register(RedemptionSession)
class RedemptionSessionAdmin(RowPagesMixin, ActionsOnlyMixin, TenantScopedAdminMixin, admin.ModelAdmin):
    list_display = [
        "session_id",
        "tenant",
        "customer",
        "max_amount",
        "status_badge",
        "expires_at",
        "used_amount",
    ]  # approved_at and used_at on the detail page: the list must fit 1366 px
    list_filter = ["status", SessionLiveFilter, "tenant"]
    search_fields = ["customer", "=session_id"]
    date_hierarchy = "created_at"
    list_select_related = ["tenant"]
    readonly_fields = ["session_id", "tenant", *SESSION_RECORD, "rejected_at", "cancelled_at"]
    exclude = ["secret_hash"]
    actions = ["cancel_selected"]

    @admin.display(description=_("status"), ordering="status")
    def status_badge(self, session):
        return badge(session.status, session.get_status_display())

    cancel_selected = row_action(
        _("Cancel selected sessions"),
        lambda session: RedemptionSession.objects.cancel(session.session_id, tenant=session.tenant),
        confirm={
            "title": _("Cancel selected sessions"),
            "explanation": _("A cancelled session can no longer be approved or consumed."),
            "columns": {
                _("session"): lambda session: session.session_id,
                _("customer"): lambda session: session.customer,
                _("maximum amount"): lambda session: session.max_amount,
                _("status"): lambda session: session.get_status_display(),
                _("expires at"): lambda session: session.expires_at,
            },
            "effect": lambda session: (
                _("cancelled")
                if session.status in OPEN_STATUSES
                else _("nothing: a %(status)s session cannot be cancelled") % {"status": session.get_status_display()}
            ),
            "confirm_label": _("Cancel these sessions"),
        },
        done_each=lambda session, _outcome: (
            _("%(session)s (%(customer)s): cancelled.") % {"session": session, "customer": session.customer}
        ),
        done_message=lambda n: ngettext("Cancelled %(n)d session.", "Cancelled %(n)d sessions.", n) % {"n": n},
    )
