"""race_demo: a storm of checkouts for one date of a capacity-3 package."""

from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.db.models.functions import Now

from bookings.exceptions import DateUnavailable
from bookings.models import Booking, Package
from bookings.services import hold_in_transaction
from core.guards import database_clock
from core.race_demo import naive_pause, scenario


@scenario
class DateCheckoutHold:
    name = "date checkout hold"
    attempts = 30
    expected_winners = 3

    def __init__(self, tenant):
        self.tenant = tenant
        self.package = Package.objects.create(
            tenant=tenant, name="Race demo hall", price=Decimal("100.00"), currency="USD", daily_capacity=3
        )
        self.date = database_clock().date() + timedelta(days=30)

    def guarded(self, i):
        with transaction.atomic():
            return hold_in_transaction(
                tenant=self.tenant,
                package_id=self.package.pk,
                date=self.date,
                customer_name=f"Customer {i}",
                customer_email=f"customer{i}@example.com",
            )

    def naive(self, i):
        active = Booking.objects.filter(
            Q(status=Booking.Status.CONFIRMED) | Q(status=Booking.Status.HELD, hold_expires_at__gt=Now()),
            package=self.package,
            date=self.date,
        ).count()
        naive_pause()
        if active >= self.package.daily_capacity:
            raise DateUnavailable()
        return Booking.objects.create(
            tenant=self.tenant,
            package=self.package,
            date=self.date,
            customer_name=f"Customer {i}",
            customer_email=f"customer{i}@example.com",
            status=Booking.Status.HELD,
            hold_expires_at=Now() + settings.BOOKING_HOLD_TTL,
            amount=self.package.price,
            currency=self.package.currency,
            created_at=Now(),
        )
