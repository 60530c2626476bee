"""What must hold for bookings, recomputed from the rows (manage.py check_invariants)."""

from django.db.models import Count, F, Q
from django.db.models.functions import Round

from bookings.managers import LIVE_STATUSES, active_q, shop_today
from bookings.models import Booking, Checkout, Package
from core import money
from core.integrity import state_machines
from core.invariants import invariant


def _scoped(queryset, tenant, path="tenant"):
    return queryset.filter(**{path: tenant}) if tenant is not None else queryset


@invariant("active bookings (confirmed, payment pending, live holds) on a date never exceed the package's capacity")
def capacity_respected(tenant):
    over = (
        # From today on: a capacity edit is judged against the dates still to come (past dates keep the
        # bookings they had under the capacity of their day).
        _scoped(Booking.objects.filter(active_q(), date__gte=shop_today()), tenant)
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


@invariant("a checkout whose payment completed has a confirmed booking or a refund owed or made")
def paid_checkouts_are_placed_or_refunded(tenant):
    refunded = [
        Checkout.RefundState.PENDING,
        Checkout.RefundState.SUBMITTED,
        Checkout.RefundState.FAILED,
        Checkout.RefundState.EXHAUSTED,
        Checkout.RefundState.SUCCEEDED,
    ]
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


@invariant("a booking is refunded exactly when its refund succeeded, and refund pending while one is owed")
def booking_refunds_follow_their_checkout(tenant):
    State, Status = Checkout.RefundState, Booking.Status
    owed = [State.PENDING, State.SUBMITTED, State.FAILED, State.EXHAUSTED]
    broken = _scoped(Checkout.objects.all(), tenant, "booking__tenant").filter(
        (Q(booking__status=Status.REFUNDED) & ~Q(refund_state=State.SUCCEEDED))
        | (Q(refund_state=State.SUCCEEDED) & ~Q(booking__status=Status.REFUNDED))
        | (Q(booking__status=Status.REFUND_PENDING) & ~Q(refund_state__in=owed))
        | (Q(refund_state__in=owed) & ~Q(booking__status=Status.REFUND_PENDING))
    )
    return [
        f"checkout {pk}: booking {booking} is {status}, refund is {refund or 'none'}"
        for pk, booking, status, refund in broken.values_list("pk", "booking_id", "booking__status", "refund_state")
    ]


def _machine_states(model, field):
    (machine,) = [m for m in state_machines(model) if m.field == field]
    return machine.states


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


@invariant("a held, payment-pending or confirmed booking from today on is exclusive exactly when capacity is 1")
def exclusive_follows_capacity(tenant):
    broken = (
        _scoped(Booking.objects.filter(status__in=LIVE_STATUSES, date__gte=shop_today()), tenant)
        .filter(Q(exclusive=True, package__daily_capacity__gt=1) | Q(exclusive=False, package__daily_capacity=1))
        .values_list("pk", "exclusive", "package__daily_capacity")
    )
    return [f"booking {pk}: exclusive={flag} but capacity {capacity}" for pk, flag, capacity in broken]


@invariant("a booking waiting for its delayed payment (payment_pending) has a checkout whose payment is processing")
def pending_payments_are_processing(tenant):
    broken = (
        _scoped(Booking.objects.filter(status=Booking.Status.PAYMENT_PENDING), tenant)
        .exclude(checkout__state=Checkout.State.PROCESSING)
        .values_list("pk", "checkout__state")
    )
    return [f"booking {pk}: payment_pending but its checkout is {state or 'missing'}" for pk, state in broken]


@invariant("a refund failed for a retry has the time it is due again")
def failed_refunds_are_scheduled(tenant):
    broken = _scoped(
        Checkout.objects.filter(refund_state=Checkout.RefundState.FAILED, next_retry_at__isnull=True),
        tenant,
        "booking__tenant",
    )
    return [f"checkout {pk}: refund failed with no next retry" for pk in broken.values_list("pk", flat=True)]


@invariant("every package's currency is a payable ISO 4217 code and its price fits the currency's minor unit")
def package_prices_fit_their_currency(tenant):
    found = []
    packages = _scoped(Package.objects.all(), tenant)
    for code in packages.values_list("currency", flat=True).distinct().order_by("currency"):
        try:
            places = money.exponent(code)
        except money.UnknownCurrency:
            unknown = packages.filter(currency=code).values_list("pk", flat=True)
            found += [f"package {pk}: currency {code!r}" for pk in unknown]
            continue
        finer = packages.filter(currency=code).exclude(price=Round("price", places))
        found += [f"package {pk}: price {price} {code}" for pk, price in finer.values_list("pk", "price")]
        above = packages.filter(currency=code, price__gt=money.max_amount(code))  # more than is charged at once
        found += [
            f"package {pk}: price {price} {code} above its ceiling" for pk, price in above.values_list("pk", "price")
        ]
    return found
