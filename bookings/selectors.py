"""Reads (no locks, nothing written): what a package's dates hold, for the operator's screens and the public API."""

import calendar
from dataclasses import dataclass
from datetime import date, timedelta

from django.db.models import Count, Q

from bookings.exceptions import PackageNotFound
from bookings.managers import PLACED_STATUSES
from bookings.models import Booking, Package
from core.guards import tenant_today


@dataclass
class Day:
    day: date
    capacity: int
    confirmed: int  # confirmed or paid-but-pending (a delayed payment): the place is taken for good
    held: int  # holds not yet expired (by the database clock)

    @property
    def free(self):
        return max(self.capacity - self.confirmed - self.held, 0)


def month_of_dates(package, year, month):
    """Every date of the month with the package's capacity and what takes it, in one query.

    Counts as the guards count (``active_q``): a hold past its expiry is free again, swept or not.
    """
    first, last = date(year, month, 1), date(year, month, calendar.monthrange(year, month)[1])
    taking = Booking.objects.active().filter(package=package, date__range=(first, last))
    counts = {
        row["date"]: row
        for row in taking.values("date").annotate(
            confirmed=Count("pk", filter=Q(status__in=PLACED_STATUSES)),
            held=Count("pk", filter=Q(status=Booking.Status.HELD)),
        )
    }
    return [
        Day(day, package.daily_capacity, counts.get(day, {}).get("confirmed", 0), counts.get(day, {}).get("held", 0))
        for day in (date(year, month, n) for n in range(1, last.day + 1))
    ]


def weeks(days):
    """The days in calendar weeks (Monday first), with None for the blanks before the first and after the last."""
    lead = [None] * days[0].day.weekday()
    cells = lead + days + [None] * (-(len(lead) + len(days)) % 7)
    return [cells[n : n + 7] for n in range(0, len(cells), 7)]


def places_left(tenant, start, end, *, package_id=None):
    """Places left on each date from ``start`` to ``end`` over the tenant's active packages (or one).

    Counts as the guards count (``active_q``): confirmed bookings and live holds take a place, a
    hold past its expiry does not, swept or not. A date before the shop's today (the database clock in the
    tenant's time zone) has none
    left. Raises PackageNotFound when ``package_id`` names no active package of the tenant.
    Returns ``[{"date": day, "remaining": n}, ...]``, one per date.
    """
    packages = Package.objects.for_tenant(tenant).active()
    if package_id is not None:
        packages = packages.filter(pk=package_id)
    capacities = dict(packages.values_list("pk", "daily_capacity"))
    if package_id is not None and not capacities:
        raise PackageNotFound()
    rows = (
        Booking.objects.active()
        .filter(package_id__in=list(capacities), date__range=(start, end))
        .values("date", "package_id")
        .annotate(n=Count("pk"))
    )
    taken = {(row["date"], row["package_id"]): row["n"] for row in rows}
    today = tenant_today(tenant)

    def remaining(day):
        if day < today:
            return 0
        return sum(max(capacity - taken.get((day, pk), 0), 0) for pk, capacity in capacities.items())

    days = (start + timedelta(days=offset) for offset in range((end - start).days + 1))
    return [{"date": day, "remaining": remaining(day)} for day in days]
