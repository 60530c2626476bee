"""What must hold for bookings, recomputed from the rows (manage.py check_invariants)."""

from django.db.models import Count, F, Q
from django.db.models.functions import Now

from bookings.models import Booking
from core.invariants import invariant


def _scoped(queryset, tenant):
    return queryset.filter(tenant=tenant) if tenant is not None else queryset


@invariant("active bookings (confirmed + unexpired holds) on a date never exceed the package's daily capacity")
def capacity_respected(tenant):
    active = Q(status=Booking.Status.CONFIRMED) | Q(status=Booking.Status.HELD, hold_expires_at__gt=Now())
    over = (
        _scoped(Booking.objects.filter(active), tenant)
        .values("package_id", "date", "package__daily_capacity")
        .annotate(active=Count("id"))
        .filter(active__gt=F("package__daily_capacity"))
    )
    return [
        f"package {row['package_id']} on {row['date']}: "
        f"{row['active']} active > capacity {row['package__daily_capacity']}"
        for row in over
    ]


@invariant("a confirmed booking has its confirmation time; a refunded one its refund time")
def settled_bookings_are_stamped(tenant):
    broken = _scoped(Booking.objects.all(), tenant).filter(
        Q(status=Booking.Status.CONFIRMED, confirmed_at__isnull=True)
        | Q(status=Booking.Status.REFUNDED, refunded_at__isnull=True)
    )
    return [f"booking {pk}" for pk in broken.values_list("pk", flat=True)]
