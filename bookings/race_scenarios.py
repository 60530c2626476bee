"""Scenario: a storm of checkouts for one date of a package (target t: the package's first day + t)."""

from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.db.models.functions import Now

from bookings.exceptions import DateUnavailable
from bookings.models import Booking, Checkout, Package
from bookings.payments import get_provider
from bookings.services import create_provider_checkout, start_checkout
from core.guards import database_clock
from core.race_demo import Scenario, customer, scenario


def naive_hold(tenant, package, day, k, *, pause, origin_proposal_id=None):
    """Count the date's places, check in Python, insert: the unguarded hold (and its checkout intent)."""
    if Booking.objects.filter(package=package, date=day).active().count() >= package.daily_capacity:
        raise DateUnavailable()
    pause()
    booking = Booking.objects.create(
        tenant=tenant,
        package=package,
        date=day,
        customer_name=customer(k),
        customer_email=f"{customer(k)}@example.com",
        status=Booking.Status.HELD,
        hold_expires_at=Now() + settings.BOOKING_HOLD_TTL,
        amount=package.price,
        currency=package.currency,
        exclusive=package.daily_capacity == 1,
        origin_proposal_id=origin_proposal_id,
        created_at=Now(),
    )
    booking.refresh_from_db(fields=["hold_expires_at"])  # the database clock's expiry, for the customer's notice
    booking.package_name = package.name  # what Booking.objects.hold returns with the booking
    booking.checkout = Checkout.objects.create(
        booking=booking, provider=get_provider().name, amount=booking.amount, currency=booking.currency
    )
    return booking


@scenario
class DateCheckoutHold(Scenario):
    """``bookings.services.start_checkout``: one package, date = its first day + t."""

    name = "date checkout hold"
    attempts = 30
    expected_winners = 3
    backstops = ("bookings.Booking:booking_within_capacity",)

    def __init__(self, tenant, *, package=None, first_day=None, **kwargs):
        super().__init__(tenant, **kwargs)
        self.package, self.first_day = package, first_day

    def prepare(self):
        self.package = Package.objects.create(
            tenant=self.tenant, name="Race demo hall", price=Decimal("100.00"), currency="USD", daily_capacity=3
        )
        self.first_day = database_clock().date() + timedelta(days=30)

    def day(self, t):
        return self.first_day + timedelta(days=t)

    def guarded(self, t, k):
        return start_checkout(
            tenant=self.tenant,
            package_id=self.package.pk,
            date=self.day(t),
            customer_name=customer(k),
            customer_email=f"{customer(k)}@example.com",
        )

    def check_then_act(self, t, k):
        package = Package.objects.for_tenant(self.tenant).active().filter(pk=self.package.pk).first()
        return naive_hold(self.tenant, package, self.day(t), k, pause=self.pause)

    def after_commit(self, booking):
        create_provider_checkout(booking)
