from datetime import timedelta
from decimal import Decimal

import factory
from django.utils import timezone

from bookings.models import Package
from tests.factories import TenantFactory


def future(days=30):
    return timezone.now().date() + timedelta(days=days)


class PackageFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Package

    tenant = factory.SubFactory(TenantFactory)
    name = factory.Sequence(lambda n: f"Package {n}")
    price = Decimal("100.00")
    currency = "USD"
    daily_capacity = 1
    active = True
