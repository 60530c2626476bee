"""Demo data for this app, called by ``manage.py seed_demo`` inside its transaction. Must be idempotent."""

from decimal import Decimal

from bookings.models import Package


def seed_demo(tenant, *, admin, api_user):
    Package.objects.get_or_create(
        tenant=tenant,
        name="Private sunset cruise",
        defaults={"price": Decimal("450.00"), "currency": "USD", "daily_capacity": 1},
    )
    Package.objects.get_or_create(
        tenant=tenant,
        name="Desert safari (small group)",
        defaults={"price": Decimal("120.00"), "currency": "USD", "daily_capacity": 3},
    )
