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
from bookings.payments.sandbox import COMPLETED, SandboxProvider
from bookings.services import reconcile_checkouts
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
    from bookings.payments.sandbox import build_event
    from bookings.services import receive_payment_event
    from tests.races import run_concurrently

    booking = book(PackageFactory(tenant=tenant, daily_capacity=1))
    checkout = checkout_of(booking)
    SandboxProvider.session_ended(checkout, COMPLETED, "paid")
    ended_unheard(booking)
    payload, signature = build_event(checkout, COMPLETED)

    def attempt(i):
        if i == 0:
            return reconcile_checkouts().done
        return receive_payment_event(payload, signature, provider_name="sandbox").result

    outcomes = run_concurrently(attempt, 2)
    assert [o.error for o in outcomes] == [None, None]
    assert Booking.objects.get(pk=booking.pk).status == "confirmed" and checkout_of(booking).state == "completed"
    results = list(PaymentEvent.objects.filter(booking_id=booking.pk).values_list("result", flat=True))
    assert results.count("confirmed") == 1 and set(results) <= {"confirmed", "unchanged"}, results
    assert recording_provider.refunds == []
    assert_invariants()


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
