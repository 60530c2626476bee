from datetime import timedelta
from io import StringIO

from django.core.management import call_command
from django.db.models.functions import Now

from bookings.models import Booking, Package
from bookings.seed import seed_demo
from bookings.services import start_checkout
from tests.bookings.factories import PackageFactory, future


def test_expire_holds_command(tenant):
    package = PackageFactory(tenant=tenant, daily_capacity=2)
    stale, live = (
        start_checkout(
            tenant=tenant, package_id=package.pk, date=future(), customer_name="A", customer_email="a@example.com"
        )
        for _ in range(2)
    )
    Booking.objects.filter(pk=stale.pk).update(hold_expires_at=Now() - timedelta(seconds=1))
    out = StringIO()
    call_command("expire_holds", stdout=out)
    assert out.getvalue().strip() == "Expired holds: 1"
    assert Booking.objects.get(pk=stale.pk).status == "expired"
    assert Booking.objects.get(pk=live.pk).status == "held"


def test_retry_refunds_with_nothing_to_do(db):
    out = StringIO()
    call_command("retry_refunds", stdout=out)
    assert "Refunds retried: 0" in out.getvalue()


def test_seed_is_idempotent_with_capacity_1_and_3(tenant, django_user_model):
    seed_demo(tenant, admin=None, api_user=None)
    seed_demo(tenant, admin=None, api_user=None)
    assert sorted(Package.objects.filter(tenant=tenant).values_list("daily_capacity", flat=True)) == [1, 3]
