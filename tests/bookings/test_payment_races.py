"""Payment events racing each other, a cancel, a new checkout and the refund retriers.

Each storm lines the attempts up on a barrier (core.storm), each on its own connection,
and asserts the exact outcome every order allows; the autouse fixture then checks the
invariants. Several dates per storm, so both orders actually happen.
"""

import time
from datetime import timedelta

import pytest
from django.db.models.functions import Now
from django.test import Client

from bookings.managers import active_q
from bookings.models import Booking, Checkout, PaymentEvent
from bookings.payments.sandbox import ASYNC_FAILED, ASYNC_SUCCEEDED
from bookings.services import cancel_booking, retry_refund, start_checkout
from core.invariants import assert_invariants
from tests.bookings.factories import PackageFactory, future, hold_without_provider_answer
from tests.bookings.test_webhooks import completed_event, deliver, event, expired_event
from tests.races import run_concurrently, tally

pytestmark = pytest.mark.django_db(transaction=True)

ROUNDS = 8


def post(payload):
    response = deliver(Client(), payload)
    assert response.status_code == 200, response.content
    return response.json()["result"]


def bookings(package, n, name="Ann"):
    return [
        start_checkout(
            tenant=package.tenant,
            package_id=package.pk,
            date=future(40 + i),
            customer_name=name,
            customer_email="ann@example.com",
        )
        for i in range(n)
    ]


def session(booking):
    return Checkout.objects.get(booking_id=booking.pk).provider_checkout_id


def pairs(outcomes):
    return [(outcomes[2 * n], outcomes[2 * n + 1]) for n in range(len(outcomes) // 2)]


def test_completed_unpaid_and_async_success_at_once_end_confirmed(recording_provider):
    package = PackageFactory()
    booked = bookings(package, ROUNDS)
    payloads = [
        (completed_event(session(b), payment_status="unpaid"), event(ASYNC_SUCCEEDED, session(b))) for b in booked
    ]

    outcomes = run_concurrently(lambda i: post(payloads[i // 2][i % 2]), 2 * ROUNDS)
    assert tally(outcomes) == {"ok": 2 * ROUNDS}
    for booking, (unpaid, success) in zip(booked, pairs(outcomes), strict=True):
        assert (unpaid.value, success.value) in [("payment_pending", "confirmed"), ("unchanged", "confirmed")]
        row = Booking.objects.select_related("checkout").get(pk=booking.pk)
        assert (row.status, row.checkout.state) == ("confirmed", "completed")
    assert recording_provider.refunds == []


def test_async_success_and_a_cancel_at_once_refund_exactly_once(recording_provider):
    package = PackageFactory()
    booked = bookings(package, ROUNDS)
    for b in booked:
        post(completed_event(session(b), payment_status="unpaid"))
    payloads = [event(ASYNC_SUCCEEDED, session(b)) for b in booked]

    def attempt(i):
        n = i // 2
        return post(payloads[n]) if i % 2 == 0 else cancel_booking(booked[n].pk).status

    outcomes = run_concurrently(attempt, 2 * ROUNDS)
    assert tally(outcomes) == {"ok": 2 * ROUNDS}
    for booking, (payment, cancel) in zip(booked, pairs(outcomes), strict=True):
        # payment first: confirmed, then the cancel refunds it; cancel first: the payment is refunded
        assert (payment.value, cancel.value) in [("confirmed", "refunded"), ("refund_pending", "cancelled")]
        assert Booking.objects.get(pk=booking.pk).status == "refunded"
    assert sorted(recording_provider.refunds) == sorted(b.pk for b in booked)  # once each


def test_a_payment_and_a_cancel_at_the_version_shown_at_once_never_refund_what_the_cancel_did_not_see(
    recording_provider,
):
    """The operator's (or storefront's) cancel carries the held booking's version; the payment lands at once."""
    from core.exceptions import VersionConflict

    package = PackageFactory()
    booked = bookings(package, ROUNDS)
    shown = {b.pk: Booking.objects.get(pk=b.pk).version for b in booked}
    payloads = [completed_event(session(b)) for b in booked]

    def attempt(i):
        booking = booked[i // 2]
        if i % 2 == 0:
            return post(payloads[i // 2])
        if i % 4 == 3:  # every other cancel a little late: both orders happen in every run
            time.sleep(0.3)
        try:
            return cancel_booking(booking.pk, version=shown[booking.pk]).status
        except VersionConflict as refusal:
            return refusal.code

    outcomes = run_concurrently(attempt, 2 * ROUNDS)
    assert tally(outcomes) == {"ok": 2 * ROUNDS}
    for booking, (payment, cancel) in zip(booked, pairs(outcomes), strict=True):
        # payment first: the cancel saw another booking, refused; cancel first: the late payment is refunded
        assert (payment.value, cancel.value) in [("confirmed", "version_conflict"), ("refund_pending", "cancelled")]
        expected = "confirmed" if cancel.value == "version_conflict" else "refunded"
        assert Booking.objects.get(pk=booking.pk).status == expected
    assert {c.value for _p, c in pairs(outcomes)} == {"version_conflict", "cancelled"}, tally(outcomes)
    refunded = sorted(b.pk for b, (_p, c) in zip(booked, pairs(outcomes), strict=True) if c.value == "cancelled")
    assert sorted(recording_provider.refunds) == refunded  # only payments made after a cancel, once each


def test_async_failure_and_a_cancel_at_once_have_one_winner(recording_provider):
    package = PackageFactory()
    booked = bookings(package, ROUNDS)
    for b in booked:
        post(completed_event(session(b), payment_status="unpaid"))
    payloads = [event(ASYNC_FAILED, session(b), payment_status="unpaid") for b in booked]

    def attempt(i):
        n = i // 2
        return post(payloads[n]) if i % 2 == 0 else cancel_booking(booked[n].pk).status

    outcomes = run_concurrently(attempt, 2 * ROUNDS)
    for booking, (failure, cancel) in zip(booked, pairs(outcomes), strict=True):
        assert failure.ok
        if cancel.ok:  # cancel first: the failure only closes the checkout
            assert (failure.value, cancel.value, Booking.objects.get(pk=booking.pk).status) == (
                "payment_failed",
                "cancelled",
                "cancelled",
            )
        else:  # failure first: the place was released, nothing left to cancel
            assert (failure.value, cancel.code, Booking.objects.get(pk=booking.pk).status) == (
                "released",
                "booking_not_cancellable",
                "expired",
            )
        assert Checkout.objects.get(booking=booking).state == "payment_failed"
    assert recording_provider.refunds == []


def test_a_foreign_expiry_and_the_real_payment_at_once_confirm(recording_provider):
    package = PackageFactory()
    booked = bookings(package, ROUNDS)
    payloads = [
        (
            completed_event(session(b)),
            expired_event("cs_other_shop", reference=str(Checkout.objects.get(booking=b).pk), booking_id=b.pk),
        )
        for b in booked
    ]
    outcomes = run_concurrently(lambda i: post(payloads[i // 2][i % 2]), 2 * ROUNDS)
    for booking, (paid, foreign) in zip(booked, pairs(outcomes), strict=True):
        assert (paid.value, foreign.value) == ("confirmed", "mismatch_session")
        assert Booking.objects.get(pk=booking.pk).status == "confirmed"
    assert PaymentEvent.objects.filter(needs_review=True).count() == ROUNDS


def test_a_delayed_payment_for_a_lapsed_hold_racing_a_new_checkout_leaves_one_place_taken(recording_provider):
    package = PackageFactory()
    late = bookings(package, ROUNDS, name="Late")
    Booking.objects.update(hold_expires_at=Now() - timedelta(seconds=1))
    payloads = [completed_event(session(b), payment_status="unpaid") for b in late]

    def attempt(i):
        n = i // 2
        if i % 2:
            return start_checkout(
                tenant=package.tenant,
                package_id=package.pk,
                date=late[n].date,
                customer_name="New",
                customer_email="new@example.com",
            ).pk
        return post(payloads[n])

    outcomes = run_concurrently(attempt, 2 * ROUNDS)
    for booking, (payment, newcomer) in zip(late, pairs(outcomes), strict=True):
        assert payment.ok
        assert Booking.objects.filter(package=package, date=booking.date).filter(active_q()).count() == 1
        if payment.value == "payment_pending":
            assert newcomer.code == "date_unavailable"
        else:
            assert payment.value == "processing" and newcomer.ok
            assert Booking.objects.get(pk=booking.pk).status == "held"  # lapsed, its place gone


def test_twenty_deliveries_of_one_async_success_make_one_transition(recording_provider):
    package = PackageFactory()
    (booking,) = bookings(package, 1)
    post(completed_event(session(booking), payment_status="unpaid"))
    payload = event(ASYNC_SUCCEEDED, session(booking), event_id="evt_async_storm")
    outcomes = run_concurrently(lambda i: post(payload), 20)
    assert tally(outcomes) == {"ok": 20}
    assert PaymentEvent.objects.get(event_id="evt_async_storm").deliveries == 20
    assert Booking.objects.get(pk=booking.pk).status == "confirmed"


def test_every_refund_retrier_at_once_asks_the_provider_once(settings, admin_user):
    from io import StringIO

    from django.core.management import call_command

    from tests.bookings.providers import RecordingProvider

    settings.PAYMENT_PROVIDER = "tests.bookings.providers.RefundDownProvider"
    package = PackageFactory()
    booked = bookings(package, ROUNDS)
    half = booked[: ROUNDS // 2]
    for b in booked:  # half failed and due (anyone retries), half exhausted (only an operator retries)
        settings.REFUND_MAX_ATTEMPTS = 8 if b in half else 1
        post(completed_event(session(b)))
        cancel_booking(b.pk)
    Checkout.objects.filter(refund_state="failed").update(next_retry_at=Now())
    assert Checkout.objects.filter(refund_state="exhausted").count() == ROUNDS - len(half)
    RecordingProvider.reset()
    settings.PAYMENT_PROVIDER = "tests.bookings.providers.RecordingProvider"

    def admin_retry():
        client = Client()
        client.force_login(admin_user)
        client.post(
            "/admin/bookings/booking/",
            {"action": "retry_refund_selected", "apply": "1", "_selected_action": [b.pk for b in booked]},
        )

    racers = [
        lambda: call_command("retry_refunds", stdout=StringIO(), stderr=StringIO()),
        admin_retry,
        lambda: [retry_refund(b.pk) for b in booked],
        lambda: [retry_refund(b.pk, operator=True) for b in reversed(booked)],
    ]
    outcomes = run_concurrently(lambda i: racers[i](), len(racers))
    assert tally(outcomes) == {"ok": len(racers)}
    assert sorted(RecordingProvider.refunds) == sorted(b.pk for b in booked)  # exactly once each
    assert set(Booking.objects.filter(pk__in=[b.pk for b in booked]).values_list("status", flat=True)) == {"refunded"}
    assert_invariants()


def test_a_reference_matched_event_is_judged_against_the_session_stored_while_it_waited(recording_provider):
    """The provider's answer (our session id) commits while a foreign event matched by reference waits.

    The event read the checkout with no session id yet (so the reference fallback applied);
    it must be judged again under the checkout's row lock, where the stored session is not
    the event's: mismatch_session, nothing confirmed.
    """
    from tests.races import Background, OpenTransaction, wait_until_blocked_or_done

    booking = hold_without_provider_answer(PackageFactory())
    checkout_pk = booking.checkout.pk
    foreign = completed_event("cs_foreign", reference=str(checkout_pk), booking_id=booking.pk)
    storing = OpenTransaction(
        lambda: Checkout.objects.open(
            checkout_pk, provider_checkout_id="cs_ours", url="https://pay.example/ours", booking=booking
        )
    ).start()
    delivery = Background(lambda: post(foreign))
    assert wait_until_blocked_or_done(delivery)  # it waits for the checkout row the answer holds
    storing.commit()
    delivery.join()
    assert delivery.error is None and delivery.result == "mismatch_session"
    checkout = Checkout.objects.get(pk=checkout_pk)
    assert (checkout.state, checkout.provider_checkout_id) == ("open", "cs_ours")
    assert Booking.objects.get(pk=booking.pk).status == "held"
