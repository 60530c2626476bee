"""What must hold for bookings, recomputed from the rows (manage.py check_invariants)."""

from django.db.models import Count, F, Q

from bookings.managers import LIVE_STATUSES, CurrentDate, active_q
from bookings.models import Booking, Checkout
from core.integrity import state_machines
from core.invariants import invariant


def _scoped(queryset, tenant, path="tenant"):
    return queryset.filter(**{path: tenant}) if tenant is not None else queryset


@invariant("active bookings (confirmed + unexpired holds) on a date never exceed the package's daily capacity")
def capacity_respected(tenant):
    over = (
        _scoped(Booking.objects.filter(active_q()), tenant)
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


@invariant("a checkout whose payment completed has a confirmed booking or a refund (pending, failed to retry, done)")
def paid_checkouts_are_placed_or_refunded(tenant):
    refunded = [Checkout.RefundState.PENDING, Checkout.RefundState.FAILED, Checkout.RefundState.SUCCEEDED]
    broken = (
        _scoped(Checkout.objects.filter(state=Checkout.State.COMPLETED), tenant, "booking__tenant")
        .exclude(booking__status=Booking.Status.CONFIRMED)
        .exclude(refund_state__in=refunded)
        .values_list("pk", "booking_id", "booking__status", "refund_state")
    )
    return [
        f"checkout {pk}: paid, booking {booking} is {status} and refund is {refund or 'none'}"
        for pk, booking, status, refund in broken
    ]


def _machine_states(model, field):
    (machine,) = [m for m in state_machines(model) if m.field == field]
    return set(machine.initial) | {state for pair in machine.transitions for state in pair}


@invariant("every booking status and checkout state / refund state is a state of its machine")
def states_inside_their_machines(tenant):
    found = []
    for model, field, path in [
        (Booking, "status", "tenant"),
        (Checkout, "state", "booking__tenant"),
        (Checkout, "refund_state", "booking__tenant"),
    ]:
        outside = _scoped(model.objects.exclude(**{f"{field}__in": _machine_states(model, field)}), tenant, path)
        found += [f"{model._meta.model_name} {pk}: {field} {value!r}" for pk, value in outside.values_list("pk", field)]
    return found


@invariant("a held or confirmed booking from today on is exclusive exactly when its package's capacity is 1")
def exclusive_follows_capacity(tenant):
    broken = (
        _scoped(Booking.objects.filter(status__in=LIVE_STATUSES, date__gte=CurrentDate()), tenant)
        .filter(Q(exclusive=True, package__daily_capacity__gt=1) | Q(exclusive=False, package__daily_capacity=1))
        .values_list("pk", "exclusive", "package__daily_capacity")
    )
    return [f"booking {pk}: exclusive={flag} but capacity {capacity}" for pk, flag, capacity in broken]
