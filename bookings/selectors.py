"""Reads for the operator's screens (no locks, nothing written): what a package's dates hold."""

import calendar
from dataclasses import dataclass
from datetime import date

from django.db.models import Count, Q

from bookings.managers import active_q
from bookings.models import Booking


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
    taking = Booking.objects.filter(package=package, date__range=(first, last)).filter(active_q())
    counts = {
        row["date"]: row
        for row in taking.values("date").annotate(
            confirmed=Count("pk", filter=Q(status__in=["confirmed", "payment_pending"])),
            held=Count("pk", filter=Q(status="held")),
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
