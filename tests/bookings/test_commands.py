from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.db.models.functions import Now

from bookings.models import Booking, Checkout, Package
from bookings.payments.sandbox import COMPLETED
from bookings.seed import seed_demo
from bookings.services import cancel_booking, sandbox_deliver, start_checkout
from tests.bookings.factories import PackageFactory, book, future
from tests.races import lock_timeout, row_locked


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


@pytest.mark.django_db(transaction=True)
def test_retry_refunds_skips_a_busy_refund_and_still_retries_the_later_ones(tenant, settings, recording_provider):
    """Regression: one refund row held by another transaction ended the run (exit 3) before the later ones."""
    settings.PAYMENT_PROVIDER = "tests.bookings.providers.RefundDownProvider"
    package = PackageFactory(tenant=tenant, daily_capacity=2)
    busy, later = (book(package, future(20)) for _ in range(2))
    for booking in (busy, later):  # paid, cancelled, the refund refused by the provider: due again now
        assert sandbox_deliver(booking.checkout, COMPLETED).result == "confirmed"
        cancel_booking(booking.pk)
    Checkout.objects.update(next_retry_at=Now())
    assert set(Checkout.objects.values_list("refund_state", flat=True)) == {"failed"}
    settings.PAYMENT_PROVIDER = "tests.bookings.providers.RecordingProvider"  # the provider is back
    out, err = StringIO(), StringIO()
    with row_locked(Checkout.objects.filter(booking=busy)), lock_timeout(200):
        with pytest.raises(SystemExit) as exited:
            call_command("retry_refunds", stdout=out, stderr=err)
    assert exited.value.code == 3  # only a busy row was left: run again shortly
    assert recording_provider.refunds == [later.pk]
    assert Booking.objects.get(pk=later.pk).status == "refunded"
    assert Checkout.objects.get(booking=busy).refund_state == "failed"  # still due: the next run takes it
    assert (
        "Refunds retried: 1, refunded: 1, submitted (the provider settles them later): 0, still failing: 0"
        in out.getvalue()
    )
    assert f"Booking #{busy.pk} left for the next run: resource_locked" in err.getvalue()
