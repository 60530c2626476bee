"""Operator screens. State changes only through actions that call the managers and services."""

from collections import defaultdict
from datetime import date, timedelta
from urllib.parse import urlencode

from django.contrib import admin
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import BooleanField, Count, ExpressionWrapper, F, Q
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import formats
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from bookings.managers import active_q
from bookings.models import (
    BOOKING_EDITABLE,
    BOOKING_RECORD,
    PACKAGE_EDITABLE,
    Booking,
    Checkout,
    Package,
    PaymentEvent,
)
from bookings.selectors import month_of_dates, weeks
from bookings.services import cancel_booking, release_hold, retry_refund
from core.admin_actions import ActionsOnlyMixin, DetailActionsMixin, row_action, seen_version
from core.admin_display import badge
from core.admin_forms import DeleteAtSeenVersionMixin, GuardedChangeFormMixin
from core.admin_history import RowPagesMixin
from core.admin_scope import TenantScopedAdminMixin
from core.guards import ClockNow, LocalToday, tenant_today
from core.money import in_currency


@admin.register(Package)
class PackageAdmin(
    RowPagesMixin, DeleteAtSeenVersionMixin, GuardedChangeFormMixin, TenantScopedAdminMixin, admin.ModelAdmin
):
    """Packages: the change form writes only the changed fields through ``edit_package`` (the package
    lock exclusive, the version the form was opened at); delete goes through ``delete_package``."""

    list_display = [
        "name",
        "tenant",
        "price",
        "currency",
        "daily_capacity",
        "is_active",
        "upcoming_load",
        "calendar_link",
    ]
    list_filter = ["is_active", "tenant", "currency"]
    search_fields = ["name", "tenant__slug"]
    list_select_related = ["tenant"]
    ordering = ["tenant__slug", "name", "pk"]  # a stable page order (the list is annotated, so no model default)
    fields = ["tenant", *PACKAGE_EDITABLE]
    actions = ["delete_selected_packages"]
    refusal_fields = {
        "capacity_below_occupancy": "daily_capacity",
        "package_invalid": None,
        "unknown_currency": "currency",
        "amount_precision": "price",
        "amount_too_large": "price",
    }

    def get_queryset(self, request):
        upcoming = active_q("bookings__") & Q(bookings__date__gte=LocalToday(F("tenant__time_zone")))  # the shop's day
        return super().get_queryset(request).annotate(upcoming=Count("bookings", filter=upcoming))

    def get_readonly_fields(self, request, obj=None):
        return ["tenant"] if obj is not None else []  # a package never moves to another tenant

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # the bulk delete skips the package lock: per row instead
        return actions

    @admin.display(description=_("upcoming bookings"), ordering="upcoming")
    def upcoming_load(self, package):
        url = reverse("admin:bookings_booking_changelist")
        query = urlencode({"package__id__exact": package.pk, "when": "upcoming"})
        return format_html('<a href="{}?{}">{}</a>', url, query, package.upcoming)

    @admin.display(description=_("calendar"))
    def calendar_link(self, package):
        return format_html(
            '<a href="{}">{}</a>', reverse("admin:bookings_package_calendar", args=[package.pk]), _("month")
        )

    def get_urls(self):
        calendar_url = path(
            "<path:object_id>/calendar/",
            self.admin_site.admin_view(self.calendar_view),
            name="bookings_package_calendar",
        )
        return [calendar_url, *super().get_urls()]

    def calendar_view(self, request, object_id):
        """A month of the package's dates: capacity, confirmed, held, free; each date opens its bookings."""
        package = self.get_object(request, unquote(object_id))  # another tenant's: 404
        if not self.has_view_permission(request, package):
            raise PermissionDenied
        today = tenant_today(package.tenant)  # the shop's day, in its time zone
        try:
            year, month = (int(part) for part in request.GET.get("month", "").split("-"))
            if not 1 < year < 9999:  # the month before and after, and each day's next day, must be dates too
                raise ValueError(year)
            first = date(year, month, 1)
        except (ValueError, OverflowError):  # OverflowError: a month past C's int, date() refuses it so
            first = today.replace(day=1)
        days = month_of_dates(package, first.year, first.month)
        bookings_url = reverse("admin:bookings_booking_changelist")
        links = {
            day.day: f"{bookings_url}?"
            + urlencode(
                {"package__id__exact": package.pk, "date__gte": day.day, "date__lt": day.day + timedelta(days=1)}
            )
            for day in days
        }
        previous, following = first - timedelta(days=1), first + timedelta(days=32)
        context = {
            **self.admin_site.each_context(request),
            "title": _("%(package)s: %(month)s")
            % {"package": package.name, "month": formats.date_format(first, "F Y")},
            "subtitle": None,
            "opts": self.model._meta,
            "object": package,
            "weeks": [[(cell, links[cell.day]) if cell else None for cell in week] for week in weeks(days)],
            "weekdays": [formats.date_format(date(2024, 1, n), "D") for n in range(1, 8)],  # 2024-01-01: a Monday
            "today": today,
            "previous": f"{previous.year}-{previous.month:02d}",
            "next": f"{following.year}-{following.month:02d}",
        }
        return TemplateResponse(request, "admin/bookings/package/calendar.html", context)

    def guarded_create(self, request, form):
        data = form.cleaned_data
        return Package.objects.create_package(tenant=data["tenant"], **{name: data[name] for name in PACKAGE_EDITABLE})

    def guarded_edit(self, request, obj, changes, *, version):
        return Package.objects.edit_package(obj.pk, tenant=None, version=version, **changes)

    def delete_model(self, request, obj):
        Package.objects.delete_package(obj.pk, tenant=None, version=self.version_seen_on_delete_page(request))

    delete_selected_packages = row_action(
        _("Delete selected packages (only those nothing refers to)"),
        # at the version the page showed: a package changed since (renamed, repriced…) is refused, not deleted
        lambda package: Package.objects.delete_package(package.pk, tenant=None, version=seen_version(package)),
        permissions=["delete"],
        confirm={
            "seen": lambda package: package.version,
            "title": _("Delete selected packages"),
            "explanation": _("Deleted for good; a package that any booking or proposal refers to is refused."),
            "columns": {
                _("package"): lambda package: package.name,
                _("price"): lambda package: f"{in_currency(package.price, package.currency)} {package.currency}",
                _("bookings"): lambda package: package.bookings.count(),
            },
            "effect": lambda package: (
                _("nothing: bookings or proposals refer to it") if Package.objects.in_use(package.pk) else _("deleted")
            ),
            "confirm_label": _("Delete these packages"),
        },
        describe=lambda package: _("Package %(name)s") % {"name": package.name},
        done_message=lambda n: ngettext("%(n)d package deleted.", "%(n)d packages deleted.", n) % {"n": n},
    )


class CheckoutInline(ActionsOnlyMixin, TenantScopedAdminMixin, admin.StackedInline):
    """The booking's checkout, read-only: it changes through the booking actions and the payment webhook."""

    tenant_path = "booking__tenant"

    model = Checkout
    extra = 0
    fields = [
        "provider",
        "state",
        "provider_checkout_id",
        "url",
        "provider_payment_id",
        "refund_state",
        "provider_refund_id",
        "refund_attempts",
        "refund_error",
        "refund_requested_at",
        "next_retry_at",
        "error",
    ]
    readonly_fields = fields


class BookingDateFilter(admin.SimpleListFilter):
    """The dates operators ask for: today, tomorrow, the next 7 days, everything upcoming (database clock, each
    booking's day read in its shop's time zone: an operator of shops in two zones sees each one's today)."""

    title = _("when")
    parameter_name = "when"

    def lookups(self, request, model_admin):
        return [
            ("today", _("Today")),
            ("tomorrow", _("Tomorrow")),
            ("next7", _("Next 7 days")),
            ("upcoming", _("Upcoming")),
            ("past", _("Past")),
        ]

    def queryset(self, request, queryset):
        def today(days=0):
            return LocalToday(F("tenant__time_zone"), days)

        ranges = {
            "today": {"date": today()},
            "tomorrow": {"date": today(1)},
            "next7": {"date__gte": today(), "date__lt": today(7)},
            "upcoming": {"date__gte": today()},
            "past": {"date__lt": today()},
        }
        return queryset.filter(**ranges[self.value()]) if self.value() in ranges else queryset


class DatePickerFilter(admin.SimpleListFilter):
    """Jump to one date with the browser's date picker (core/templates/admin/lockstep/date_picker_filter.html)."""

    title = _("date")
    parameter_name = "on"
    template = "admin/lockstep/date_picker_filter.html"

    def lookups(self, request, model_admin):
        return [("", "")]  # the picker is the choice; a filter with no lookups is not shown

    def queryset(self, request, queryset):
        try:
            return queryset.filter(date=date.fromisoformat(self.value())) if self.value() else queryset
        except ValueError:  # not a date: show everything rather than an error page
            return queryset


def _booking_label(booking):
    return _("Booking #%(id)s") % {"id": booking.pk}


def _money_to(booking):
    return {
        "amount": f"{in_currency(booking.amount, booking.currency)} {booking.currency}",
        "email": booking.customer_email,
    }


def _refund_state(booking):
    checkout = getattr(booking, "checkout", None)
    return checkout.get_refund_state_display() if checkout is not None else "-"


# What a confirmation page shows of each booking before a money action.
BOOKING_COLUMNS = {
    _("booking"): lambda b: b.pk,
    _("customer"): lambda b: f"{b.customer_name} <{b.customer_email}>",
    _("package"): lambda b: b.package.name,
    _("date"): lambda b: b.date,
    _("status"): lambda b: b.get_status_display(),
    _("amount"): lambda b: _money_to(b)["amount"],
}


def _cancel_effect(booking):
    Status = Booking.Status
    if booking.status == Status.CONFIRMED:
        return _("cancelled, %(amount)s refunded to %(email)s") % _money_to(booking)
    if booking.status in (Status.HELD, Status.PAYMENT_PENDING):
        return _("cancelled (nothing was paid)")
    return _("nothing: a %(status)s booking cannot be cancelled") % {"status": booking.get_status_display()}


def _cancelled(booking, result):
    """What happened, as the booking now stands."""
    money = {"booking": _booking_label(booking), **_money_to(booking)}
    if result.status == Booking.Status.REFUNDED:
        return _("%(booking)s: cancelled, %(amount)s refunded to %(email)s.") % money
    if result.status == Booking.Status.REFUND_PENDING:
        return _REFUND_UNDER_WAY[_refund_state_of(booking)] % money
    return _("%(booking)s: cancelled.") % money


def _refund_state_of(booking):
    return Checkout.objects.filter(booking_id=booking.pk).values_list("refund_state", flat=True).first()


# A cancelled booking whose refund is not made yet, by its refund state.
_REFUND_UNDER_WAY = defaultdict(
    lambda: _("%(booking)s: cancelled; the refund of %(amount)s failed for now and is retried by itself."),
    {
        Checkout.RefundState.SUBMITTED: _(
            "%(booking)s: cancelled; the refund of %(amount)s is submitted, and the booking is refunded when "
            "the payment provider confirms it."
        ),
        Checkout.RefundState.EXHAUSTED: _(
            "%(booking)s: cancelled; the payment provider failed the refund of %(amount)s: an operator must act."
        ),
    },
)

# What an operator's refund retry left, by the refund state it recorded.
_RETRIED = {
    Checkout.RefundState.SUCCEEDED: _("%(booking)s: %(amount)s refunded to %(email)s."),
    Checkout.RefundState.SUBMITTED: _(
        "%(booking)s: refund of %(amount)s submitted; the booking is refunded when the payment provider confirms it."
    ),
    Checkout.RefundState.FAILED: _("%(booking)s: the payment provider refused again (%(error)s); retried by itself."),
    Checkout.RefundState.EXHAUSTED: _("%(booking)s: the payment provider refused again (%(error)s): act on it."),
}


def _retry_effect(booking):
    """What an operator's retry would do now: ask for the refund, or nothing (no refund to retry)."""
    checkout = getattr(booking, "checkout", None)
    if checkout is not None and Checkout.objects.refunds_to_retry(operator=True).filter(pk=checkout.pk).exists():
        return _("refund %(amount)s to %(email)s") % _money_to(booking)
    return _("nothing: no failed refund to retry")


def _retried(booking, state):
    error = Checkout.objects.filter(booking_id=booking.pk).values_list("refund_error", flat=True).first()
    return _RETRIED[state] % {"booking": _booking_label(booking), "error": error or "-", **_money_to(booking)}


@admin.register(Booking)
class BookingAdmin(RowPagesMixin, GuardedChangeFormMixin, TenantScopedAdminMixin, admin.ModelAdmin):
    """Bookings: contact fields edited through ``edit_contact`` (only the changed ones, the version the
    form was opened at); every state change through an action calling the managers and services."""

    list_display = ["id", "date", "package", "customer", "shown_status", "money", "tenant"]  # fits 1366 px
    list_filter = [
        "status",
        BookingDateFilter,
        DatePickerFilter,
        ("checkout__refund_state", admin.ChoicesFieldListFilter),
        "date",
        "package",
        "tenant",
    ]
    search_fields = ["customer_name", "customer_email", "=id"]
    date_hierarchy = "date"
    list_select_related = ["package", "tenant"]
    readonly_fields = ["tenant", "package", "date", *BOOKING_RECORD]
    fields = ["tenant", "package", "date", *BOOKING_EDITABLE, *BOOKING_RECORD]
    inlines = [CheckoutInline]
    actions = ["cancel_selected", "release_hold_selected", "retry_refund_selected"]

    def has_add_permission(self, request):
        return False  # bookings are made through checkout, which holds the date under its lock

    def has_delete_permission(self, request, obj=None):
        return False

    def get_queryset(self, request):
        # A hold past its expiry no longer counts (guards judge by the clock), swept or not: show it so.
        lapsed = ExpressionWrapper(
            Q(status=Booking.Status.HELD, hold_expires_at__lte=ClockNow()), output_field=BooleanField()
        )
        return super().get_queryset(request).annotate(hold_lapsed=lapsed)

    @admin.display(description=_("customer"), ordering="customer_name")
    def customer(self, booking):
        return format_html("{}<br><small>{}</small>", booking.customer_name, booking.customer_email)

    @admin.display(description=_("amount"), ordering="amount")
    def money(self, booking):
        return _money_to(booking)["amount"]

    @admin.display(description=_("status"), ordering="status")
    def shown_status(self, booking):
        if getattr(booking, "hold_lapsed", False):
            return badge(Booking.Status.EXPIRED, _("expired (hold lapsed, not swept yet)"))
        return badge(booking.status, booking.get_status_display())

    def guarded_edit(self, request, obj, changes, *, version):
        return Booking.objects.edit_contact(obj.pk, version=version, **changes)

    cancel_selected = row_action(
        _("Cancel selected bookings (refund paid ones)"),
        # at the version the page showed: a booking paid (or otherwise moved) since is refused, not refunded
        lambda booking: cancel_booking(booking.pk, version=seen_version(booking)),
        select_related=["package"],
        confirm={
            "seen": lambda booking: booking.version,
            "title": _("Cancel selected bookings"),
            "explanation": _(
                "Each booking is cancelled on its own; a paid one is refunded in full to the customer. "
                "A booking that can no longer be cancelled is reported with the reason."
            ),
            "columns": BOOKING_COLUMNS,
            "effect": _cancel_effect,
            "confirm_label": _("Cancel these bookings"),
        },
        describe=_booking_label,
        done_each=_cancelled,
        done_message=lambda n: ngettext("%(n)d booking cancelled.", "%(n)d bookings cancelled.", n) % {"n": n},
    )

    release_hold_selected = row_action(
        _("Release selected holds"),
        lambda booking: release_hold(booking.pk),  # then its payment page is closed, as a cancel's
        describe=_booking_label,
        done_message=lambda n: ngettext("%(n)d hold released.", "%(n)d holds released.", n) % {"n": n},
    )

    retry_refund_selected = row_action(
        _("Retry failed refunds now (also those given up on)"),
        # an operator's explicit retry: not held back by the backoff, takes exhausted ones
        lambda booking: retry_refund(booking.pk, operator=True) or False,  # False: no refund to retry
        select_related=["package", "checkout"],
        confirm={
            "title": _("Retry failed refunds"),
            "explanation": _("The payment provider is asked again, now, for each failed refund below."),
            "columns": {**BOOKING_COLUMNS, _("refund"): lambda b: _refund_state(b)},
            "effect": _retry_effect,
            "confirm_label": _("Retry these refunds"),
        },
        describe=_booking_label,
        done_each=_retried,
        done_message=lambda n: (
            ngettext("%(n)d refund asked for again.", "%(n)d refunds asked for again.", n) % {"n": n}
        ),
    )


@admin.register(PaymentEvent)
class PaymentEventAdmin(DetailActionsMixin, ActionsOnlyMixin, TenantScopedAdminMixin, admin.ModelAdmin):
    """The inbox, read-only. "Needs review": signed events that did not match what they named (another
    session, amount or currency; money for no checkout of ours) and changed nothing. Staff see their
    tenants' events; an event that matched no booking only superusers see."""

    tenant_path = "booking__tenant"

    list_display = ["event_id", "type", "result", "needs_review", "booking_id", "received_at"]  # fits 1366 px
    list_filter = ["needs_review", "type", "result", "provider"]
    search_fields = ["event_id", "=booking__id"]
    date_hierarchy = "received_at"
    readonly_fields = [
        "provider",
        "event_id",
        "type",
        "payload",
        "received_at",
        "processed_at",
        "result",
        "needs_review",
        "reviewed_at",
        "reviewed_by",
        "booking",
        "deliveries",
    ]
    actions = ["mark_reviewed_selected"]

    mark_reviewed_selected = row_action(
        _("Mark selected events reviewed"),
        lambda event, operator: PaymentEvent.objects.mark_reviewed(event.pk, operator=operator),  # False: not flagged
        by_operator=True,
        done_message=lambda n: ngettext("%(n)d event marked reviewed.", "%(n)d events marked reviewed.", n) % {"n": n},
        nothing_to_do=_("not flagged for review."),
    )
