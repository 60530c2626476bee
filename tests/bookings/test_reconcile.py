"""A payment whose webhook never got through is found by asking the provider (``reconcile_checkouts``).

An outage longer than the provider's retries, or a wrong signing secret, leaves a paid checkout ``open`` and
its booking expired: the money taken, the customer told nothing. The sweep asks the provider how each
checkout still open an hour after its hold ended was settled, and settles it as the lost event would have.
"""

import io
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db.models.functions import Now

from bookings.managers import UNHEARD_AFTER
from bookings.models import Booking, Checkout, PaymentEvent
from bookings.payments.sandbox import ASYNC_FAILED, ASYNC_SUCCEEDED, COMPLETED, SandboxProvider
from bookings.services import reconcile_checkouts, sandbox_deliver
from core.invariants import assert_invariants
from tests.bookings.factories import PackageFactory, book, future

pytestmark = pytest.mark.django_db


def checkout_of(booking):
    return Checkout.objects.select_related("booking").get(booking_id=booking.pk)


def ended_unheard(booking, minutes=1):
    """The hold ended UNHEARD_AFTER (and ``minutes``) ago, and the expiry sweep has run."""
    Booking.objects.filter(pk=booking.pk).update(hold_expires_at=Now() - UNHEARD_AFTER - timedelta(minutes=minutes))
    call_command("expire_holds", stdout=io.StringIO())


def test_a_payment_whose_event_never_came_confirms_its_booking_when_the_date_is_still_free(tenant):
    package = PackageFactory(tenant=tenant, daily_capacity=1)
    booking = book(package)
    SandboxProvider.session_ended(checkout_of(booking), COMPLETED, "paid")  # paid; the webhook never got through
    ended_unheard(booking)
    assert Booking.objects.get(pk=booking.pk).status == "expired"
    out = io.StringIO()
    call_command("reconcile_checkouts", stdout=out)
    assert "settled from the provider's own record: 1" in out.getvalue()
    assert Booking.objects.get(pk=booking.pk).status == "confirmed"
    checkout = checkout_of(booking)
    assert checkout.state == "completed" and checkout.provider_payment_id == f"pi_sandbox_{checkout.pk}"
    event = PaymentEvent.objects.get(booking_id=booking.pk)
    assert event.event_id == f"lookup_{checkout.provider_checkout_id}_{COMPLETED}" and not event.needs_review
    assert reconcile_checkouts().done == 0  # settled: not asked again
    assert_invariants()


def test_a_payment_whose_event_never_came_is_refunded_when_its_date_was_taken_meanwhile(tenant, recording_provider):
    package = PackageFactory(tenant=tenant, daily_capacity=1)
    day = future()
    lost = book(package, day)
    SandboxProvider.session_ended(checkout_of(lost), COMPLETED, "paid")
    ended_unheard(lost)
    taken = book(package, day, name="Bea")  # the date was free again: someone else holds it
    assert reconcile_checkouts().done == 1
    assert Booking.objects.get(pk=lost.pk).status == "refunded"
    assert recording_provider.refunds == [lost.pk]
    assert Booking.objects.get(pk=taken.pk).status == "held"
    assert_invariants()


def test_a_session_never_paid_is_closed_as_expired_and_nothing_is_charged(tenant, recording_provider):
    booking = book(PackageFactory(tenant=tenant))
    ended_unheard(booking)
    assert reconcile_checkouts().done == 1
    assert checkout_of(booking).state == "expired"
    assert Booking.objects.get(pk=booking.pk).status == "expired" and recording_provider.refunds == []


def test_a_checkout_whose_session_may_still_be_settling_is_not_asked(tenant):
    booking = book(PackageFactory(tenant=tenant))
    SandboxProvider.session_ended(checkout_of(booking), COMPLETED, "paid")
    Booking.objects.filter(pk=booking.pk).update(hold_expires_at=Now() - timedelta(minutes=5))  # its event may come
    assert reconcile_checkouts().done == 0
    assert checkout_of(booking).state == "open"


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("round_", range(3))
def test_the_look_up_and_the_late_webhook_racing_settle_the_payment_once(tenant, recording_provider, round_):
    """Every writer of the checkout at once: the sweep's look-up and the real event arriving late, each on its own
    connection. Whichever locks the checkout first confirms the booking; the other finds it settled (or the sweep
    no longer finds it open): one confirmation, no refund, the invariants hold."""
    booking = book(PackageFactory(tenant=tenant, daily_capacity=1))
    SandboxProvider.session_ended(checkout_of(booking), COMPLETED, "paid")
    ended_unheard(booking)
    results = look_up_racing_the_late_event(booking, COMPLETED)
    assert results.count("confirmed") == 1 and set(results) <= {"confirmed", "unchanged"}, results
    assert recording_provider.refunds == []
    assert_invariants()


def look_up_racing_the_late_event(booking, event_type):
    """The sweep's look-up and the real ``event_type`` event, each on its own connection at once; both end without
    an error, the booking confirmed and its checkout completed. Returns the results the inbox recorded."""
    from bookings.payments.sandbox import build_event
    from bookings.services import receive_payment_event
    from tests.races import run_concurrently

    payload, signature = build_event(checkout_of(booking), event_type)

    def attempt(i):
        if i == 0:
            return reconcile_checkouts().done
        return receive_payment_event(payload, signature, provider_name="sandbox").result

    outcomes = run_concurrently(attempt, 2)
    assert [o.error for o in outcomes] == [None, None]
    assert Booking.objects.get(pk=booking.pk).status == "confirmed" and checkout_of(booking).state == "completed"
    return list(PaymentEvent.objects.filter(booking_id=booking.pk).values_list("result", flat=True))


def test_checkouts_the_provider_cannot_settle_never_keep_the_others_from_their_turn(tenant, monkeypatch):
    """Regression: the sweep asked the first ``limit`` unheard checkouts by id, every run. A hundred it could not
    settle (sessions of another Stripe account, a question that always fails) kept every later one, a payment
    among them, from ever being asked: taken and never placed nor refunded. It asks the least recently asked
    first now, and a provider that did not answer is "run again later" (exit 3), not a refusal (exit 1)."""
    from bookings.exceptions import PaymentProviderUnavailable
    from bookings.payments.base import ProviderError

    package = PackageFactory(tenant=tenant, daily_capacity=5)
    stuck, also_stuck, paid = (book(package, future(), name=name) for name in ("Ann", "Bea", "Cid"))
    SandboxProvider.session_ended(checkout_of(paid), COMPLETED, "paid")
    for booking in (stuck, also_stuck, paid):
        ended_unheard(booking)
    asked, outcome = [], SandboxProvider.checkout_outcome

    def unanswerable(self, checkout):
        asked.append(checkout.booking_id)
        if checkout.booking_id in (stuck.pk, also_stuck.pk):
            raise ProviderError("No such checkout.session")
        return outcome(self, checkout)

    monkeypatch.setattr(SandboxProvider, "checkout_outcome", unanswerable)
    first, second = reconcile_checkouts(limit=2), reconcile_checkouts(limit=2)
    assert asked[:2] == [stuck.pk, also_stuck.pk] and asked[2] == paid.pk  # its turn came in the second run
    assert (first.done, second.done) == (0, 1) and Booking.objects.get(pk=paid.pk).status == "confirmed"
    assert [(pk, type(refusal)) for pk, refusal in first.skipped] == [
        (stuck.pk, PaymentProviderUnavailable),
        (also_stuck.pk, PaymentProviderUnavailable),
    ]
    err = io.StringIO()
    with pytest.raises(SystemExit) as exit:
        call_command("reconcile_checkouts", stdout=io.StringIO(), stderr=err)
    assert exit.value.code == 3, err.getvalue()  # the provider did not answer: run again later
    assert "payment_provider_unavailable" in err.getvalue()
    assert_invariants()


def awaiting_delayed_payment(booking, *, for_=UNHEARD_AFTER + timedelta(minutes=1)):
    """The session completed unpaid (a delayed method, its event delivered): ``payment_pending``, the checkout
    ``processing``, and nothing heard since ``for_``."""
    sandbox_deliver(checkout_of(booking), COMPLETED, payment_status="unpaid")
    assert Booking.objects.get(pk=booking.pk).status == "payment_pending"
    Checkout.objects.filter(booking_id=booking.pk).update(updated_at=Now() - for_)


@pytest.mark.parametrize(
    "settled, booking_status, checkout_state",
    [(ASYNC_SUCCEEDED, "confirmed", "completed"), (ASYNC_FAILED, "expired", "payment_failed")],
)
def test_a_delayed_payment_whose_outcome_never_came_is_settled_from_the_providers_record(
    tenant, settled, booking_status, checkout_state
):
    """Regression: only ``open`` checkouts were looked up. A delayed payment (a bank debit) whose
    ``async_payment_succeeded`` or ``_failed`` never got through left its booking ``payment_pending`` for good:
    paid and never confirmed, or failed with its date held from everyone else."""
    booking = book(PackageFactory(tenant=tenant, daily_capacity=1))
    awaiting_delayed_payment(booking)
    SandboxProvider.session_ended(checkout_of(booking), settled)  # settled at the provider; the event was lost
    assert reconcile_checkouts().done == 1
    assert Booking.objects.get(pk=booking.pk).status == booking_status
    checkout = checkout_of(booking)
    assert checkout.state == checkout_state
    event = PaymentEvent.objects.filter(booking_id=booking.pk).latest("pk")
    assert event.event_id == f"lookup_{checkout.provider_checkout_id}_{settled}"
    assert reconcile_checkouts().done == 0  # settled: not asked again
    assert_invariants()


def test_a_delayed_payment_still_settling_is_asked_again_later_and_left_as_it_is(tenant):
    booking = book(PackageFactory(tenant=tenant, daily_capacity=1))
    awaiting_delayed_payment(booking, for_=timedelta(minutes=5))
    assert reconcile_checkouts().done == 0 and checkout_of(booking).looked_up_at is None  # its event may come yet
    Checkout.objects.filter(booking_id=booking.pk).update(updated_at=Now() - UNHEARD_AFTER - timedelta(minutes=1))
    assert reconcile_checkouts().done == 0  # asked: the provider says it is still settling
    checkout = checkout_of(booking)
    assert checkout.state == "processing" and checkout.looked_up_at is not None
    assert Booking.objects.get(pk=booking.pk).status == "payment_pending"


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("round_", range(3))
def test_the_look_up_and_the_late_delayed_payment_event_racing_settle_it_once(tenant, recording_provider, round_):
    """The sweep's look-up and the real ``async_payment_succeeded`` arriving late, each on its own connection:
    one confirmation, no refund, the invariants hold."""
    booking = book(PackageFactory(tenant=tenant, daily_capacity=1))
    awaiting_delayed_payment(booking)
    SandboxProvider.session_ended(checkout_of(booking), ASYNC_SUCCEEDED)
    results = look_up_racing_the_late_event(booking, ASYNC_SUCCEEDED)
    assert results.count("confirmed") == 1 and set(results) <= {"confirmed", "unchanged", "payment_pending"}, results
    assert recording_provider.refunds == []
    assert_invariants()
