from datetime import timedelta
from decimal import Decimal

import factory
from django.db import transaction
from django.utils import timezone

from bookings.models import Package
from bookings.services import hold_in_transaction, start_checkout
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
    is_active = True


def book(package, day=None, name="Ann"):
    """A hold made through the public checkout path (hold, then the provider's checkout)."""
    return start_checkout(
        tenant=package.tenant,
        package_id=package.pk,
        date=day or future(),
        customer_name=name,
        customer_email="ann@example.com",
    )


def withdraw(package, how):
    """Take ``package`` off sale through its manager: ``"delete"`` it or ``"deactivate"`` it."""
    if how == "delete":
        return Package.objects.delete_package(package.pk, tenant=package.tenant)
    return Package.objects.edit_package(package.pk, tenant=package.tenant, is_active=False)


def hold_without_provider_answer(package):
    """A hold and its checkout intent, committed; the provider never answered (no session id on the checkout)."""
    with transaction.atomic():
        return hold_in_transaction(
            tenant=package.tenant,
            package_id=package.pk,
            date=future(),
            customer_name="Ann",
            customer_email="ann@example.com",
        )
