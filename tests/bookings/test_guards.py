"""Each guard of the payment and refund paths, shown by behaviour (each test fails with its guard removed)."""

import io
import time

import pytest
from django.core.management import call_command
from django.db import transaction
from django.db.models.functions import Now

from bookings.exceptions import BookingNotRefundPending
from bookings.models import Booking, Checkout
from bookings.payments.base import SIGNATURE_TOLERANCE_SECONDS, ProviderRefund, sign
from bookings.services import (
    cancel_booking,
    hold_in_transaction,
    refund_booking,
    retry_refund,
    sandbox_deliver,
)
from core.models import Notification
from tests.bookings.factories import PackageFactory, book, future, hold_without_provider_answer
from tests.bookings.test_webhooks import completed_event, deliver
from tests.races import OpenTransaction, run_concurrently, tally


@pytest.fixture
def package(tenant):
    return PackageFactory(tenant=tenant)


def succeeded(refund_id):
    return ProviderRefund(id=refund_id, status="succeeded")


def paid(package):
    booking = book(package)
    assert sandbox_deliver(booking.checkout, "checkout.session.completed").result == "confirmed"
    return booking


# --- the webhook's timestamp rule ------------------------------------------------------------


@pytest.mark.parametrize(
    "offset, accepted",
    [
        (-(SIGNATURE_TOLERANCE_SECONDS - 10), True),
        (SIGNATURE_TOLERANCE_SECONDS - 10, True),
        (-(SIGNATURE_TOLERANCE_SECONDS + 10), False),
        (SIGNATURE_TOLERANCE_SECONDS + 10, False),
        (10**6, False),
    ],
)
def test_a_signature_dated_beyond_the_tolerance_either_way_is_refused(client, package, offset, accepted):
    """The rule kept: a timestamp more than the tolerance in the future is refused like a stale one
    (Stripe's verifier accepts future timestamps; a future-dated signature stays replayable)."""
    booking = book(package)
    payload = completed_event(booking.checkout.provider_checkout_id)
    response = deliver(client, payload, sign(payload, timestamp=time.time() + offset))
    assert response.status_code == (200 if accepted else 400), response.content
    assert Booking.objects.get(pk=booking.pk).status == ("confirmed" if accepted else "held")


# --- state filters of the refund and checkout operations --------------------------------------


def test_request_refund_claims_only_a_checkout_with_no_refund_yet(package):
    booking = paid(package)
    checkout_pk = booking.checkout.pk
    with transaction.atomic():
        assert Checkout.objects.request_refund(checkout_pk) is True
    Checkout.objects.filter(pk=checkout_pk).update(updated_at=Now())
    before = Checkout.objects.get(pk=checkout_pk).updated_at
    with transaction.atomic():  # in flight: a second path owing it must not claim it (nor refresh it)
        assert Checkout.objects.request_refund(checkout_pk) is False
    assert Checkout.objects.get(pk=checkout_pk).updated_at == before
    Checkout.objects.refund_failed(checkout_pk, error="down")
    with transaction.atomic():  # failed: only a retry claims it (claim_refund_retry), with its count
        assert Checkout.objects.request_refund(checkout_pk) is False
    assert Checkout.objects.get(pk=checkout_pk).refund_state == "failed"


def test_a_refund_answer_records_one_refund_only(package):
    booking = paid(package)
    checkout_pk = booking.checkout.pk
    pending = Checkout.RefundState.PENDING
    with transaction.atomic():
        assert Checkout.objects.record_refund(checkout_pk, succeeded("re_never_claimed"), was=pending) is False
        Checkout.objects.request_refund(checkout_pk)
        assert Checkout.objects.record_refund(checkout_pk, succeeded("re_first"), was=pending) is True
        assert Checkout.objects.record_refund(checkout_pk, succeeded("re_second"), was=pending) is False
    checkout = Checkout.objects.get(pk=checkout_pk)
    assert (checkout.refund_state, checkout.provider_refund_id, checkout.refund_attempts) == (
        "succeeded",
        "re_first",
        1,
    )


def test_complete_refund_stamps_a_refunded_booking_once(package):
    booking = paid(package)
    with pytest.raises(BookingNotRefundPending):
        Booking.objects.complete_refund(booking.pk, refund_id="re_x")  # confirmed, nothing owed
    cancel_booking(booking.pk)
    refunded = Booking.objects.get(pk=booking.pk)
    assert refunded.status == "refunded"
    with pytest.raises(BookingNotRefundPending):
        Booking.objects.complete_refund(booking.pk, refund_id="re_x")
    assert Booking.objects.get(pk=booking.pk).refunded_at == refunded.refunded_at


def test_open_never_reopens_a_checkout_a_payment_or_a_failure_settled(package):
    """The provider's answer stored after the payment's webhook (or after the failure path) must not
    move the checkout back to open."""
    booking = hold_without_provider_answer(package)
    checkout = booking.checkout
    Checkout.objects.filter(pk=checkout.pk).update(provider_checkout_id="cs_early")
    with transaction.atomic():
        Checkout.objects.mark_completed(checkout.pk, provider_checkout_id="cs_early")
    assert (
        Checkout.objects.open(checkout.pk, provider_checkout_id="cs_early", url="http://x/", booking=booking) is False
    )
    assert Checkout.objects.get(pk=checkout.pk).state == "completed"
    with transaction.atomic():
        other = hold_in_transaction(
            tenant=package.tenant,
            package_id=package.pk,
            date=future(2),
            customer_name="B",
            customer_email="b@example.com",
        )
    Checkout.objects.fail(other.checkout.pk, error="down")
    assert (
        Checkout.objects.open(other.checkout.pk, provider_checkout_id="cs_late", url="http://x/", booking=other)
        is False
    )
    assert Checkout.objects.get(pk=other.checkout.pk).state == "failed"
    assert not Notification.objects.exists()  # no checkout opened: no pay link owed


# --- the provider is asked for a refund only by the caller that claimed it ---------------------


@pytest.mark.parametrize("refund_state", ["", "failed", "succeeded"])
def test_refund_booking_never_asks_the_provider_for_a_refund_nobody_claimed(package, recording_provider, refund_state):
    booking = paid(package)
    with transaction.atomic():
        Booking.objects.cancel(booking.pk)  # refund_pending, but the refund not (or no longer) pending
    if refund_state:
        with transaction.atomic():
            Checkout.objects.request_refund(booking.checkout.pk)
        if refund_state == "failed":
            Checkout.objects.refund_failed(booking.checkout.pk, error="down")
        else:
            with transaction.atomic():
                Checkout.objects.record_refund(booking.checkout.pk, succeeded("re_done"), was="pending")
    assert refund_booking(booking.pk) is None
    assert recording_provider.refunds == []


@pytest.mark.django_db(transaction=True)
def test_refund_retriers_racing_ask_the_provider_once(tenant, recording_provider, settings, admin_user):
    """retry_refunds, the admin retry action, retry_refund and a cancel, at once, on one failed refund."""
    from django.test import Client

    settings.PAYMENT_PROVIDER = "tests.bookings.providers.RefundDownProvider"
    booking = paid(PackageFactory(tenant=tenant))
    cancel_booking(booking.pk)
    assert Checkout.objects.get(booking=booking).refund_state == "failed"
    settings.PAYMENT_PROVIDER = "tests.bookings.providers.RecordingProvider"
    admin = Client()
    admin.force_login(admin_user)

    def attempt(i):
        if i < 3:
            call_command("retry_refunds", stdout=io.StringIO())
        elif i < 5:
            return retry_refund(booking.pk)
        elif i == 5:
            admin.post(
                "/admin/bookings/booking/",
                {"action": "retry_refund_selected", "apply": "1", "_selected_action": [booking.pk]},
            )
        else:
            return cancel_booking(booking.pk).status

    outcomes = run_concurrently(attempt, 8)
    assert tally(outcomes) == {"ok": 6, "booking_not_cancellable": 2}
    assert recording_provider.refunds == [booking.pk]
    assert Booking.objects.get(pk=booking.pk).status == "refunded"
    assert Checkout.objects.get(booking=booking).refund_attempts == 2


# --- the unique index backstop, and the sweep as a guarded command -----------------------------


@pytest.mark.parametrize("capacity", [1, 2])
def test_a_payment_the_database_refuses_goes_to_refund_not_a_500(
    tenant, capacity, monkeypatch, client, recording_provider
):
    """Should the managers' count ever disagree with the database's (a bug): its own count
    (booking_within_capacity), or for one place the one-confirmed-per-exclusive-date index, refuses the
    confirm; the refusal is caught in a savepoint and the paid booking goes to refund_pending, refunded once."""
    from bookings.managers import BookingManager

    package = PackageFactory(tenant=tenant, daily_capacity=capacity)
    first = book(package)
    for name in "BC"[: capacity - 1]:  # the other places, taken
        book(package, first.date, name=name)
    Booking.objects.filter(pk=first.pk).update(hold_expires_at=Now())
    second = book(package, first.date)
    sandbox_deliver(second.checkout, "checkout.session.completed")
    real = BookingManager._taken
    monkeypatch.setattr(BookingManager, "_taken", lambda self, *a, **k: real(self, *a, **k)._replace(taken=0))
    payload = completed_event(first.checkout.provider_checkout_id)
    for _delivery in range(2):  # and a redelivery answers the same, never a 500
        response = deliver(client, payload)
        assert response.status_code == 200 and response.json()["result"] == "refund_pending"
    assert Booking.objects.get(pk=first.pk).status == "refunded"
    assert recording_provider.refunds == [first.pk]


@pytest.mark.django_db(transaction=True)
def test_expire_holds_answers_a_busy_row_with_exit_3_not_a_traceback(tenant, settings):
    booking = book(PackageFactory(tenant=tenant))
    Booking.objects.filter(pk=booking.pk).update(hold_expires_at=Now())
    err = io.StringIO()
    with OpenTransaction(lambda: Booking.objects.select_for_update().get(pk=booking.pk)):
        with pytest.raises(SystemExit) as exited:
            call_command("expire_holds", stdout=io.StringIO(), stderr=err)
    assert exited.value.code == 3
    assert err.getvalue().startswith(f"Booking #{booking.pk} left for the next run: resource_locked: ")
    assert Booking.objects.get(pk=booking.pk).status == "held"
    call_command("expire_holds", stdout=io.StringIO())
    assert Booking.objects.get(pk=booking.pk).status == "expired"


def test_cancelling_a_paid_booking_without_a_checkout_claims_and_asks_for_nothing(package, recording_provider):
    """Only a caller whose transaction claimed a refund asks the provider: a paid booking with no
    checkout (confirmed by hand) is cancelled to refund_pending and the cancel answers, not a 404."""
    with transaction.atomic():
        booking = Booking.objects.hold(package, future(), customer_name="A", customer_email="a@example.com")
        Booking.objects.confirm_payment(booking.pk)
    assert cancel_booking(booking.pk).status == "refund_pending"
    assert recording_provider.refunds == []
