from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection, transaction
from django.db.models.functions import Now
from django.test.utils import CaptureQueriesContext

from bookings.exceptions import (
    BookingNotCancellable,
    BookingNotFound,
    BookingNotHeld,
    DateInPast,
    DateUnavailable,
    PackageNotFound,
)
from bookings.models import Booking, Checkout
from bookings.services import hold_in_transaction, start_checkout
from core.exceptions import VersionConflict
from tests.bookings.factories import PackageFactory, future


def hold(package, day=None, name="Ann"):
    with transaction.atomic():
        return Booking.objects.hold(package, day or future(), customer_name=name, customer_email="ann@example.com")


def checkout(tenant, package, day=None):
    return start_checkout(
        tenant=tenant, package_id=package.pk, date=day or future(), customer_name="Ann", customer_email="a@example.com"
    )


@pytest.mark.django_db(transaction=True)
def test_hold_refuses_outside_a_transaction():
    package = PackageFactory()
    with pytest.raises(RuntimeError, match="transaction"):
        Booking.objects.hold(package, future(), customer_name="A", customer_email="a@example.com")


def test_hold_fills_capacity_then_refuses(tenant):
    package = PackageFactory(tenant=tenant, daily_capacity=2)
    first, second = hold(package), hold(package)
    assert first.status == second.status == Booking.Status.HELD
    assert first.amount == package.price and first.exclusive is False
    assert first.hold_expires_at - first.created_at == timedelta(minutes=15)
    with pytest.raises(DateUnavailable):
        hold(package)
    assert hold(package, future(31)).status == Booking.Status.HELD  # another date is free


def test_expired_hold_never_counts_even_before_the_sweep(tenant):
    package = PackageFactory(tenant=tenant)
    stale = hold(package)
    Booking.objects.filter(pk=stale.pk).update(hold_expires_at=Now() - timedelta(seconds=1))
    assert Booking.objects.get(pk=stale.pk).status == Booking.Status.HELD  # not swept
    assert hold(package).status == Booking.Status.HELD


def test_released_cancelled_and_refunded_bookings_free_the_date(tenant):
    package = PackageFactory(tenant=tenant)
    booking = hold(package)
    Booking.objects.release(booking.pk)
    second = hold(package)
    Booking.objects.cancel(second.pk)
    assert hold(package).status == Booking.Status.HELD


def test_past_date_is_refused(tenant):
    package = PackageFactory(tenant=tenant)
    with pytest.raises(DateInPast):
        hold(package, future(-1))


def test_capacity_one_packages_hold_exclusive_bookings(tenant):
    assert hold(PackageFactory(tenant=tenant, daily_capacity=1)).exclusive is True


def test_hold_in_transaction_refuses_inactive_and_foreign_packages(tenant, other_tenant):
    inactive = PackageFactory(tenant=tenant, is_active=False)
    foreign = PackageFactory(tenant=other_tenant)
    for package_id in (inactive.pk, foreign.pk, 10**12):
        with pytest.raises(PackageNotFound), transaction.atomic():
            hold_in_transaction(
                tenant=tenant, package_id=package_id, date=future(), customer_name="A", customer_email="a@example.com"
            )
    assert not Booking.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_successful_checkout_round_trips(recording_provider):
    """4 round trips: BEGIN with the package lock (shared) and the date lock and the read of the
    package's terms and the date's count after them (one query), one statement inserting the booking
    and its checkout intent, COMMIT; then the provider call (no lock, no query) and one statement, its
    own transaction, that stores its answer (a filtered UPDATE) and owes the customer's e-mail with its job.

    Was 5 before a transaction's BEGIN went with its first statement (core/db_backend, issue 16); 6
    before the booking and its checkout were inserted by one statement (issue 16); 11 before
    the locks and the read shared a query and the opening owed its e-mail in its own statement
    (issue 16); 13 before the two locks shared a statement and the e-mail's row its job's.

    Was 10 before notifications (1.1.0).

    Was 8: the package lock is new (capacity edits take it exclusive) but the package read joined the
    count, which now reads the capacity after both locks; the provider's answer is stored by a guarded
    operation, which opens its own transaction like every other (core.guards: +BEGIN/COMMIT).
    """
    package = PackageFactory()
    with CaptureQueriesContext(connection) as queries:
        booking = checkout(package.tenant, package)
    sql = [q["sql"] for q in queries.captured_queries]
    assert booking.checkout.state == Checkout.State.OPEN
    assert sql == [*sql[0:2], "COMMIT", sql[3]], sql
    begin, locks, place = sql[0].split("; ")
    assert begin == "BEGIN"
    assert locks.startswith("SELECT CASE WHEN t.shared THEN pg_advisory_xact_lock_shared(")
    assert f"'{{bookings.package:{package.pk},bookings.date:{package.pk}:" in locks and "'{t,f}'" in locks
    assert place.startswith("SELECT p.tenant_id, p.is_active, p.daily_capacity")
    assert "clock_timestamp()" in place and "statement_timestamp" not in place
    assert sql[1].startswith('WITH "booking" AS (INSERT INTO "bookings_booking"')
    assert '"checkout" AS (INSERT INTO "bookings_checkout"' in sql[1]
    # after the provider answered: the opening, the e-mail's row and its job, one statement
    assert sql[3].startswith('WITH event AS (UPDATE "bookings_checkout"')
    assert "INSERT INTO core_notification" in sql[3] and "procrastinate_defer_jobs" in sql[3]
    assert recording_provider.checkouts == [booking.pk]


def test_a_hold_with_its_checkout_intent_returns_both_rows_as_one_statement_wrote_them(tenant):
    package = PackageFactory(tenant=tenant, price="120.50", currency="EUR")
    with transaction.atomic():
        booking = Booking.objects.hold(
            package, future(), customer_name="Ann", customer_email="ann@example.com", checkout_provider="sandbox"
        )
    stored = Checkout.objects.select_related("booking").get()
    assert (booking.pk, booking.checkout.pk, booking.checkout.booking_id) == (stored.booking_id, stored.pk, booking.pk)
    terms = (stored.state, stored.provider, stored.amount, stored.currency)
    assert terms == ("creating", "sandbox", Decimal("120.50"), "EUR")
    assert booking.checkout.created_at == stored.created_at and booking.created_at == stored.booking.created_at
    assert booking.checkout.booking is booking and not booking.checkout._state.adding


def test_provider_failure_releases_the_hold(tenant, settings):
    settings.PAYMENT_PROVIDER = "tests.bookings.providers.DownProvider"
    package = PackageFactory(tenant=tenant)
    from bookings.exceptions import PaymentProviderUnavailable

    with pytest.raises(PaymentProviderUnavailable):
        checkout(tenant, package)
    booking = Booking.objects.get()
    assert booking.status == Booking.Status.EXPIRED
    assert booking.checkout.state == Checkout.State.FAILED and "connection refused" in booking.checkout.error
    settings.PAYMENT_PROVIDER = "sandbox"
    assert checkout(tenant, package).status == Booking.Status.HELD  # the date is free again


def test_provider_failure_locks_the_booking_row_before_the_checkout_row(tenant, settings):
    """Regression: the failure path updated checkout then booking, the reverse of cancel and the webhook."""
    from bookings.exceptions import PaymentProviderUnavailable

    settings.PAYMENT_PROVIDER = "tests.bookings.providers.DownProvider"
    with CaptureQueriesContext(connection) as queries, pytest.raises(PaymentProviderUnavailable):
        checkout(tenant, PackageFactory(tenant=tenant))
    sqls = [q["sql"] for q in queries.captured_queries]
    first_lock = next(i for i, sql in enumerate(sqls) if "FOR NO KEY UPDATE" in sql or sql.startswith("UPDATE"))
    assert '"bookings_booking"' in sqls[first_lock] and "FOR NO KEY UPDATE" in sqls[first_lock], sqls[first_lock]
    updates = [sql.split('"')[1] for sql in sqls if sql.startswith("UPDATE")]
    # the checkout failed (only while still creating), then its hold released: both under the booking's lock
    assert updates == ["bookings_checkout", "bookings_booking"], updates


def test_confirm_payment_outcomes(tenant):
    package = PackageFactory(tenant=tenant)
    booking = hold(package)
    with transaction.atomic():
        settled, outcome = Booking.objects.confirm_payment(booking.pk)
    assert outcome == "confirmed" and settled.confirmed_at is not None
    with transaction.atomic():
        assert Booking.objects.confirm_payment(booking.pk)[1] == "unchanged"
    with pytest.raises(BookingNotFound), transaction.atomic():
        Booking.objects.confirm_payment(10**12)


def test_confirm_payment_of_an_expired_hold_whose_date_was_taken_goes_to_refund(tenant):
    package = PackageFactory(tenant=tenant)
    late = hold(package)
    Booking.objects.filter(pk=late.pk).update(hold_expires_at=Now() - timedelta(seconds=1))
    hold(package)  # someone else took the freed date
    with transaction.atomic():
        booking, outcome = Booking.objects.confirm_payment(late.pk)
    assert outcome == booking.status == Booking.Status.REFUND_PENDING


def test_cancel_and_release_refusals(tenant, other_tenant):
    package = PackageFactory(tenant=tenant)
    booking = hold(package)
    with pytest.raises(BookingNotFound):
        Booking.objects.cancel(booking.pk, tenant=other_tenant)
    assert Booking.objects.cancel(booking.pk, tenant=tenant).status == Booking.Status.CANCELLED
    with pytest.raises(BookingNotCancellable):
        Booking.objects.cancel(booking.pk)
    with pytest.raises(BookingNotHeld):
        Booking.objects.release(booking.pk)
    with pytest.raises(BookingNotFound):
        Booking.objects.release(10**12)


def test_cancel_of_a_confirmed_booking_awaits_refund(tenant):
    booking = hold(PackageFactory(tenant=tenant))
    with transaction.atomic():
        Booking.objects.confirm_payment(booking.pk)
    assert Booking.objects.cancel(booking.pk).status == Booking.Status.REFUND_PENDING


def test_cancel_at_a_version_refuses_a_booking_moved_since_and_names_a_state_first(tenant):
    booking = hold(PackageFactory(tenant=tenant))
    shown = Booking.objects.get(pk=booking.pk).version
    with transaction.atomic():
        Booking.objects.confirm_payment(booking.pk)  # paid after the operator looked
    with pytest.raises(VersionConflict):
        Booking.objects.cancel(booking.pk, version=shown)
    assert Booking.objects.get(pk=booking.pk).status == Booking.Status.CONFIRMED
    now = Booking.objects.get(pk=booking.pk).version
    assert Booking.objects.cancel(booking.pk, version=now).status == Booking.Status.REFUND_PENDING
    with pytest.raises(BookingNotCancellable):  # no longer cancellable, whatever version was seen
        Booking.objects.cancel(booking.pk, version=now)
    with pytest.raises(BookingNotFound):
        Booking.objects.cancel(10**12, version=1)


def test_expire_holds_sweeps_only_expired_holds(tenant):
    package = PackageFactory(tenant=tenant, daily_capacity=3)
    stale, live = hold(package), hold(package)
    Booking.objects.filter(pk=stale.pk).update(hold_expires_at=Now() - timedelta(seconds=1))
    assert Booking.objects.expire_holds().done == 1
    assert Booking.objects.get(pk=stale.pk).status == Booking.Status.EXPIRED
    assert Booking.objects.get(pk=live.pk).status == Booking.Status.HELD
