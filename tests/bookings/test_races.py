"""Concurrent checkouts and webhook deliveries, each on its own connection, lined up on a barrier."""

import threading
import time
from contextlib import nullcontext

import pgtrigger
import pytest
from django.db import connections, transaction
from django.db.models.functions import Now
from django.test import Client

from bookings.exceptions import DateUnavailable
from bookings.managers import active_q
from bookings.models import Booking, PaymentEvent
from bookings.services import hold_in_transaction, start_checkout
from core.db import LockNamespace
from core.guards import constraint_name, database_refusals
from tests.bookings.factories import PackageFactory, book, future
from tests.bookings.test_webhooks import completed_event, deliver
from tests.races import Background, OpenTransaction, run_concurrently, tally, wait_until_blocked_or_done

pytestmark = pytest.mark.django_db(transaction=True)

CAPACITY = "bookings.Booking:booking_within_capacity"


def checkout_attempt(package, day):
    def attempt(i):
        return start_checkout(
            tenant=package.tenant,
            package_id=package.pk,
            date=day,
            customer_name=f"Customer {i}",
            customer_email=f"c{i}@example.com",
        ).pk

    return attempt


@pytest.mark.parametrize("capacity", [1, 3])
def test_30_concurrent_checkouts_fill_exactly_the_capacity(capacity, recording_provider):
    package, day = PackageFactory(daily_capacity=capacity), future()
    outcomes = run_concurrently(checkout_attempt(package, day), 30)
    assert tally(outcomes) == {"ok": capacity, "date_unavailable": 30 - capacity}
    assert Booking.objects.filter(package=package, date=day).filter(active_q()).count() == capacity
    assert Booking.objects.count() == capacity  # losers left nothing behind
    assert sorted(recording_provider.checkouts) == sorted(o.value for o in outcomes if o.ok)


def unlocked_hold(package, day, *, backstop=True):
    """The real hold (BOOKING_DATE switched off by the caller) in a longer transaction, held 50 ms; ``backstop``
    False switches the database's own count off too."""

    def attempt(i):
        # as start_checkout composes it: refusals translated outside the transaction
        with pgtrigger.ignore(CAPACITY) if not backstop else nullcontext(), database_refusals(), transaction.atomic():
            booking = hold_in_transaction(
                tenant=package.tenant,
                package_id=package.pk,
                date=day,
                customer_name=f"C{i}",
                customer_email="c@example.com",
            )
            time.sleep(0.05)
        return booking.pk

    return attempt


@pytest.mark.control("date checkout hold")
@pytest.mark.parametrize("capacity", [1, 3])
def test_without_the_date_lock_holds_overbook(capacity, locks_switched_off):
    """The real hold with BOOKING_DATE (and the database's count) switched off: each counts the places before
    the others commit."""
    locks_switched_off(LockNamespace.BOOKING_DATE)
    package, day = PackageFactory(daily_capacity=capacity), future()
    outcomes = run_concurrently(unlocked_hold(package, day, backstop=False), 30)
    assert tally(outcomes)["ok"] > capacity
    assert Booking.objects.filter(package=package, date=day).filter(active_q()).count() > capacity


@pytest.mark.parametrize("capacity", [1, 3])
def test_without_the_date_lock_the_databases_count_alone_fills_exactly_the_capacity(capacity, locks_switched_off):
    """The same storm with the database's own count on (booking_within_capacity): every hold passes the
    managers' unlocked read, and the trigger, queued on the date's lock behind each hold in flight, refuses
    every one past the capacity (409 date_unavailable), rolling its booking back."""
    locks_switched_off(LockNamespace.BOOKING_DATE)
    package, day = PackageFactory(daily_capacity=capacity), future()
    outcomes = run_concurrently(unlocked_hold(package, day), 30)
    assert tally(outcomes) == {"ok": capacity, "date_unavailable": 30 - capacity}
    assert Booking.objects.filter(package=package, date=day).filter(active_q()).count() == capacity
    assert Booking.objects.count() == capacity


def test_a_raw_hold_queues_behind_a_hold_in_flight_and_is_refused_once_it_committed(recording_provider):
    """Forced interleaving: a hold of the date's last place is in flight (its transaction holds BOOKING_DATE);
    a booking written straight to the table meanwhile waits in its trigger for that lock, then counts on a
    snapshot that sees the committed hold: refused, never a second booking of the place."""
    from tests.bookings.test_integrity import booking_of

    package, day = PackageFactory(daily_capacity=1), future()

    def last_place():
        return hold_in_transaction(
            tenant=package.tenant, package_id=package.pk, date=day, customer_name="A", customer_email="a@example.com"
        ).pk

    with OpenTransaction(last_place) as holder:

        def raw():
            with transaction.atomic():
                return booking_of(package, date=day).pk

        background = Background(raw)
        assert wait_until_blocked_or_done(background), "the raw write did not wait for the hold in flight"
        holder.commit()
        background.join()
    assert constraint_name(background.error) == "booking_within_capacity", background.error
    assert list(Booking.objects.values_list("pk", flat=True)) == [holder.result]


def test_no_lock_is_held_during_the_provider_call(settings):
    from tests.bookings.providers import SlowProvider

    settings.PAYMENT_PROVIDER = "tests.bookings.providers.SlowProvider"
    package, slow_day, other_day = PackageFactory(daily_capacity=1), future(40), future(41)
    SlowProvider.slow_dates, SlowProvider.entered = {slow_day}, threading.Event()
    first = {}

    def first_customer():
        try:
            first["booking"] = book(package, slow_day, "A")
        finally:
            connections.close_all()

    thread = threading.Thread(target=first_customer)
    thread.start()
    try:
        assert SlowProvider.entered.wait(5)  # the first customer's hold is committed and the provider is blocked
        started = time.monotonic()
        other = book(package, other_day, "B")
        other_took = time.monotonic() - started
        assert other.status == Booking.Status.HELD and other.checkout.url
        assert thread.is_alive()  # the first is still inside the provider call

        started = time.monotonic()
        with pytest.raises(DateUnavailable):
            book(package, slow_day, "C")
        refused_in = time.monotonic() - started
        assert thread.is_alive()
    finally:
        thread.join(10)
    print(f"other date {other_took * 1000:.0f} ms, full date refused in {refused_in * 1000:.0f} ms")
    assert other_took < 0.5 and refused_in < 0.5, (other_took, refused_in)
    assert first["booking"].checkout.state == "open"


def test_20_concurrent_deliveries_of_one_event_make_one_transition(recording_provider):
    package = PackageFactory()
    booking = book(package, future(), "A")
    payload = completed_event(booking.checkout.provider_checkout_id, event_id="evt_storm")

    def delivery(i):
        response = deliver(Client(), payload)
        return response.status_code, response.json()["duplicate"]

    outcomes = run_concurrently(delivery, 20)
    assert tally(outcomes) == {"ok": 20}
    assert sorted(o.value for o in outcomes) == [(200, False)] + [(200, True)] * 19
    event = PaymentEvent.objects.get()
    assert (event.deliveries, event.result, event.booking_id) == (20, "confirmed", booking.pk)
    assert Booking.objects.get(pk=booking.pk).status == Booking.Status.CONFIRMED
    assert recording_provider.refunds == []


def test_late_payment_racing_a_new_checkout_for_the_freed_date(recording_provider):
    """An expired hold's payment and a new customer race for the same place: exactly one gets it, every time."""
    from datetime import timedelta

    package = PackageFactory(daily_capacity=1)
    days = [future(60 + n) for n in range(25)]
    late = [book(package, day, "Late") for day in days]
    Booking.objects.update(hold_expires_at=Now() - timedelta(seconds=1))
    payloads = [completed_event(b.checkout.provider_checkout_id) for b in late]

    def attempt(i):
        n = i // 2
        if i % 2:
            return book(package, days[n], "New").pk
        return deliver(Client(), payloads[n]).json()["result"]

    outcomes = run_concurrently(attempt, 50)
    for n, day in enumerate(days):
        payment, newcomer = outcomes[2 * n], outcomes[2 * n + 1]
        assert payment.ok
        assert Booking.objects.filter(package=package, date=day).filter(active_q()).count() == 1
        if payment.value == "confirmed":
            assert newcomer.code == "date_unavailable"
        else:
            assert payment.value == "refund_pending" and newcomer.ok
            assert Booking.objects.get(pk=late[n].pk).status == Booking.Status.REFUNDED
    assert len(recording_provider.refunds) == sum(1 for o in outcomes[::2] if o.value == "refund_pending")
