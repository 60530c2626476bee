"""Operator screens. State changes only through actions that call the managers."""

from urllib.parse import urlencode

from django import forms
from django.contrib import admin
from django.urls import reverse
from django.utils import formats
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from core.admin_actions import ActionsOnlyMixin, row_action, seen_version
from core.admin_display import badge
from core.admin_filters import queryset_filter
from core.admin_forms import DeleteAtSeenVersionMixin, GuardedChangeFormMixin
from core.admin_history import RowPagesMixin
from core.admin_scope import TenantScopedAdminMixin
from core.exceptions import VersionConflict
from core.money import in_currency, payable_currencies
from promos.choices import OPEN_STATUSES
from promos.managers import PROMO_EDITABLE, PROMO_TERMS
from promos.models import SESSION_RECORD, USAGE_RECORD, PromoCode, PromoUsage, RedemptionSession
from promos.money import DEFAULT_CURRENCY, written_bonus_value


def in_its_currency(field, description):
    """An admin column (or read-only field) showing ``field`` with its row's currency's places and code."""

    @admin.display(description=description, ordering=field)
    def show(self, row):
        amount = in_currency(getattr(row, field), row.currency)
        return "-" if amount is None else f"{amount} {row.currency}"

    return show


def with_currency_columns(names, columns):
    """``names`` with each money field replaced by its ``in_its_currency`` column (``columns``: field -> column)."""
    return [columns.get(name, name) for name in names]


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
REFUSAL_FIELDS = {
    "promo_code_taken": "code",
    "promo_limit_below_usage": "total_usage_limit",
    "promo_currency_frozen": "currency",
    "unknown_currency": "currency",
    "amount_precision": "bonus_value",
}


class PromoCodeAdminForm(forms.ModelForm):
    """The code's terms; amounts open written with the code's currency's places (10.00 USD, 500 JPY)."""

    currency = forms.ChoiceField(
        label=_("currency"),
        choices=[("", "---------"), *((code, code) for code in payable_currencies())],
        required=False,  # a post without it (a form from before currencies) keeps the code's
        help_text=_("ISO 4217. It cannot change once the code has been used."),
    )

    class Meta:
        model = PromoCode
        fields = ["tenant", *PROMO_TERMS]  # activation has its own guarded actions

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        promo = self.instance
        if promo.pk is not None and promo.currency not in dict(self.fields["currency"].choices):
            # a code stored in a currency since withdrawn keeps it on the page (it may not be chosen anew)
            self.fields["currency"].choices = [*self.fields["currency"].choices, (promo.currency, promo.currency)]
        if promo.pk is None or self.is_bound:
            return
        self.initial["bonus_value"] = written_bonus_value(promo)
        self.initial["max_bonus"] = in_currency(promo.max_bonus, promo.currency)

    def clean_currency(self):
        return self.cleaned_data.get("currency") or self.instance.currency or DEFAULT_CURRENCY


# What the (de)activation confirmation pages show of each selected code.
CODE_STATE_COLUMNS = {
    _("code"): lambda promo: promo.code,
    _("times used"): lambda promo: promo.times_used,
    _("total usage limit"): lambda promo: promo.total_usage_limit or "-",
    _("active"): lambda promo: _("yes") if promo.is_active else _("no"),
}


def shown_state(promo):
    """What the activation pages carry for each code: the state they show it in (1 inactive, 2 active; a POST
    without it carries NOT_SEEN, no state), so a code is refused only when switched since, not for another edit."""
    return 2 if promo.is_active else 1


def state_seen(promo):
    """Whether the confirmation page showed ``promo`` active; a POST that did not carry it is refused."""
    seen = seen_version(promo)
    if seen not in (1, 2):
        raise VersionConflict(current=promo.version)
    return seen == 2


@admin.register(PromoCode)
class PromoCodeAdmin(
    RowPagesMixin, DeleteAtSeenVersionMixin, GuardedChangeFormMixin, TenantScopedAdminMixin, admin.ModelAdmin
):
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
        "bonus",
        "maximum_bonus",
        "usage",
        "per_customer_limit",
        "is_active",
        "starts_at",
        "ends_at",
    ]
    list_filter = ["is_active", PromoStateFilter, "bonus_type", "currency", "tenant"]
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
                    in_currency(u.base_amount, u.currency),
                    in_currency(u.bonus_amount, u.currency),
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
        # A refusal (promo_in_use: a usage just arrived, version_conflict: changed since the page showed it,
        # resource_locked, promo_not_found) is reported on the list by the mixin's delete_view.
        PromoCode.objects.delete_code(obj.pk, tenant=obj.tenant, version=self.version_seen_on_delete_page(request))

    @admin.display(description=_("used / limit"), ordering="times_used")
    def usage(self, promo):
        return promo.usage_display

    @admin.display(description=_("bonus value"), ordering="bonus_value")
    def bonus(self, promo):
        unit = "%" if promo.bonus_type == PromoCode.BonusType.PERCENTAGE else promo.currency
        return f"{written_bonus_value(promo)} {unit}"

    maximum_bonus = in_its_currency("max_bonus", _("maximum bonus"))

    deactivate_selected = row_action(
        _("Deactivate selected promo codes"),
        lambda promo: PromoCode.objects.set_active(
            promo.pk, tenant=promo.tenant, active=False, shown_active=state_seen(promo)
        ),
        confirm={
            "seen": shown_state,  # acted on as the page showed it (switched since: refused)
            "title": _("Deactivate selected promo codes"),
            "explanation": _("Customers can no longer redeem these codes; uses already made stay as they are."),
            "columns": CODE_STATE_COLUMNS,
            "effect": lambda promo: _("deactivated") if promo.is_active else _("nothing: already inactive"),
            "confirm_label": _("Deactivate these codes"),
        },
        done_each=lambda promo, _outcome: _("%(code)s: deactivated.") % {"code": promo.code},
        done_message=lambda n: (
            ngettext("Deactivated %(n)d promo code.", "Deactivated %(n)d promo codes.", n) % {"n": n}
        ),
    )

    # Confirmed first, as deactivating is: a code a colleague deactivated (a leaked one, say) is shown as
    # such before "select all" over a filter puts it back in customers' hands.
    activate_selected = row_action(
        _("Activate selected promo codes"),
        lambda promo: PromoCode.objects.set_active(
            promo.pk, tenant=promo.tenant, active=True, version=seen_version(promo)
        ),
        confirm={
            "seen": lambda promo: promo.version,  # as the page showed it, terms and all (changed since: refused)
            "title": _("Activate selected promo codes"),
            "explanation": _(
                "Customers can redeem these codes again, within their dates and limits. A code deactivated "
                "because it leaked would be live again."
            ),
            "columns": CODE_STATE_COLUMNS,
            "effect": lambda promo: _("activated") if not promo.is_active else _("nothing: already active"),
            "confirm_label": _("Activate these codes"),
        },
        done_each=lambda promo, _outcome: _("%(code)s: activated.") % {"code": promo.code},
        done_message=lambda n: ngettext("Activated %(n)d promo code.", "Activated %(n)d promo codes.", n) % {"n": n},
    )


VoidedFilter = queryset_filter(_("voided"), "voided", {"no": (_("live"), "live"), "yes": (_("voided"), "voided")})


USAGE_MONEY = {"base_amount": "base_amount_shown", "bonus_amount": "bonus_amount_shown"}


@admin.register(PromoUsage)
class PromoUsageAdmin(RowPagesMixin, ActionsOnlyMixin, TenantScopedAdminMixin, admin.ModelAdmin):
    # each amount shows its currency ("100.00 USD"): no column of its own (the list fits a 1366 px laptop)
    list_display = [
        "id", "promo", "tenant", *(c for c in with_currency_columns(USAGE_RECORD, USAGE_MONEY) if c != "currency")
    ]  # fmt: skip
    list_filter = [VoidedFilter, "currency", "tenant"]
    search_fields = ["customer", "reference", "promo__code"]
    date_hierarchy = "created_at"
    list_select_related = ["promo", "tenant"]
    readonly_fields = ["tenant", "promo", *with_currency_columns(USAGE_RECORD, USAGE_MONEY)]
    exclude = [*USAGE_MONEY]  # shown by their columns, in their currency
    base_amount_shown = in_its_currency("base_amount", _("base amount"))
    bonus_amount_shown = in_its_currency("bonus_amount", _("bonus amount"))
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
                _("base amount"): lambda usage: in_currency(usage.base_amount, usage.currency),
                _("bonus amount"): lambda usage: in_currency(usage.bonus_amount, usage.currency),
                _("currency"): lambda usage: usage.currency,
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


SESSION_MONEY = {"max_amount": "max_amount_shown", "used_amount": "used_amount_shown"}


@admin.register(RedemptionSession)
class RedemptionSessionAdmin(RowPagesMixin, ActionsOnlyMixin, TenantScopedAdminMixin, admin.ModelAdmin):
    """Sessions are opened over the API (the customer must be given the secret): here they are read
    and cancelled. The currency is shown with every amount, in its own places."""

    list_display = [
        "session_id",
        "tenant",
        "customer",
        "max_amount_shown",
        "status_badge",
        "expires_at",
        "used_amount_shown",
    ]  # approved_at and used_at on the detail page: the list must fit 1366 px
    list_filter = ["status", SessionLiveFilter, "currency", "tenant"]
    search_fields = ["customer", "=session_id"]
    date_hierarchy = "created_at"
    list_select_related = ["tenant"]
    readonly_fields = [
        "session_id",
        "tenant",
        *with_currency_columns(SESSION_RECORD, SESSION_MONEY),
        "rejected_at",
        "cancelled_at",
    ]
    max_amount_shown = in_its_currency("max_amount", _("maximum amount"))
    used_amount_shown = in_its_currency("used_amount", _("used amount"))
    exclude = ["secret_hash", *SESSION_MONEY]  # the amounts are shown by their columns, in their currency
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
                _("maximum amount"): lambda session: (
                    f"{in_currency(session.max_amount, session.currency)} {session.currency}"
                ),
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
