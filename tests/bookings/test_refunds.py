"""A refund as far as the provider took it: its answer, then its events (``refund.updated``, ``refund.failed``).

Stripe answers a refund ``succeeded``, ``pending`` (or ``requires_action``), ``failed`` or
``canceled``, and a pending one, or even a succeeded one, may fail later. The refund is
recorded as far as it went (``submitted`` until its event), a failed one is left for an
operator, and the booking is refunded exactly when its refund succeeded.
"""

import io
import json
from datetime import timedelta
from decimal import Decimal
from types import SimpleNamespace

import pytest
from django.core import mail
from django.core.management import call_command
from django.db import IntegrityError, transaction
from django.db.models.functions import Now

from bookings import services
from bookings.models import Booking, Checkout, PaymentEvent
from bookings.payments.base import ProviderError, ProviderRefund, parse_event
from bookings.payments.sandbox import SandboxProvider, build_refund_event
from bookings.payments.stripe import StripeProvider
from bookings.services import (
    cancel_booking,
    check_submitted_refunds,
    receive_payment_event,
    refund_booking,
    retry_refund,
    sandbox_deliver,
    sandbox_deliver_refund,
)
from core.models import Notification
from tests.bookings.factories import PackageFactory, book
from tests.bookings.providers import PendingRefundProvider
from tests.races import attempted_while_held, run_concurrently, tally

State = Checkout.RefundState


@pytest.fixture
def package(tenant):
    return PackageFactory(tenant=tenant)


@pytest.fixture
def pending_refunds(settings, recording_provider):
    settings.PAYMENT_PROVIDER = "tests.bookings.providers.PendingRefundProvider"
    return recording_provider


@pytest.fixture
def operators(settings):
    settings.OPERATOR_EMAILS = ["ops@example.com"]


def paid(package):
    booking = book(package)
    assert sandbox_deliver(booking.checkout, "checkout.session.completed").result == "confirmed"
    return booking


def cancelled(package):
    """A paid booking, cancelled: its refund asked for once, as far as the provider took it."""
    booking = paid(package)
    cancel_booking(booking.pk)
    return booking


def state_of(booking):
    checkout = Checkout.objects.select_related("booking").get(booking=booking)
    return checkout.booking.status, checkout.refund_state


def deliver(booking, status, **kwargs):
    return sandbox_deliver_refund(Checkout.objects.get(booking=booking), status=status, **kwargs)


def drift():
    out = io.StringIO()
    try:
        call_command("check_invariants", stdout=out)
    except Exception:  # noqa: BLE001 - the report names the drift
        return out.getvalue()
    return ""


def gave_up_alerts(booking):
    return Notification.objects.filter(kind="refund_gave_up", subject__startswith=f"booking:{booking.pk}:").count()


# --- the provider's answer --------------------------------------------------------------------


def test_a_pending_refund_is_submitted_and_the_booking_waits_for_its_event(package, pending_refunds):
    booking = cancelled(package)
    assert state_of(booking) == ("refund_pending", "submitted")
    checkout = Checkout.objects.get(booking=booking)
    assert checkout.provider_refund_id.startswith("re_sandbox_") and checkout.refund_attempts == 1
    assert not Notification.objects.filter(kind="booking_refunded").exists()  # not refunded yet

    assert deliver(booking, "succeeded").result == "refunded"
    assert state_of(booking) == ("refunded", "succeeded")
    assert Booking.objects.get(pk=booking.pk).refunded_at is not None
    assert Notification.objects.filter(kind="booking_refunded").count() == 1
    assert deliver(booking, "succeeded").result == "unchanged"  # Stripe's charge.refund.updated twin, or a repeat
    assert Notification.objects.filter(kind="booking_refunded").count() == 1
    assert pending_refunds.refunds == [booking.pk]
    assert drift() == ""


def test_a_refund_the_provider_fails_at_once_is_left_for_an_operator_never_replayed(
    package, recording_provider, operators, monkeypatch
):
    monkeypatch.setattr(SandboxProvider, "refund_status", "failed")
    booking = cancelled(package)
    checkout = Checkout.objects.get(booking=booking)
    assert state_of(booking) == ("refund_pending", "exhausted")
    assert checkout.refund_error == f"refund {checkout.provider_refund_id} failed: no reason given"
    assert gave_up_alerts(booking) == 1
    # Nothing retries it by itself: its key would replay the failed refund.
    call_command("retry_refunds", stdout=io.StringIO())
    assert recording_provider.refunds == [booking.pk]
    assert drift() == ""


# --- its events ---------------------------------------------------------------------------------


def test_a_submitted_refund_that_fails_is_an_operators_whose_retry_asks_for_a_new_refund(
    package, pending_refunds, operators
):
    booking = cancelled(package)
    failed = Checkout.objects.get(booking=booking).provider_refund_id
    assert deliver(booking, "failed", failure_reason="expired_or_canceled_card").result == "refund_failed"
    checkout = Checkout.objects.get(booking=booking)
    assert state_of(booking) == ("refund_pending", "exhausted")
    assert checkout.refund_error == f"refund {failed} failed: expired_or_canceled_card"
    assert gave_up_alerts(booking) == 1
    assert customer_news(booking) == []  # never told it was refunded: nothing to take back
    assert deliver(booking, "failed", failure_reason="expired_or_canceled_card").result == "superseded_refund"  # twin
    assert gave_up_alerts(booking) == 1
    assert drift() == ""

    SandboxProvider.settle_refund(failed, "failed")  # Stripe: a failed refund no longer stands against the payment
    assert Checkout.objects.claim_refund_retry(checkout.pk, operator=True)  # the admin's retry
    # the failed refund's late event, while its successor is asked for, is not the successor's
    assert deliver(booking, "failed", refund_id=failed).result == "superseded_refund"
    assert Checkout.objects.get(booking=booking).refund_state == "pending"
    assert refund_booking(booking.pk) == "submitted"  # asked again, not yet refunded
    checkout = Checkout.objects.get(booking=booking)
    assert pending_refunds.keys == [f"lockstep-refund-{checkout.pk}", f"lockstep-refund-{checkout.pk}-after-{failed}"]
    assert checkout.refund_state == "submitted" and checkout.provider_refund_id != failed
    assert checkout.refund_attempts == 2 and checkout.refund_error == ""

    # The old refund's late events belong to it, not to the new one, and are no one's to review.
    assert deliver(booking, "failed", refund_id=failed).result == "superseded_refund"
    assert deliver(booking, "succeeded", refund_id=failed).result == "superseded_refund"
    assert deliver(booking, "succeeded").result == "refunded"
    assert state_of(booking) == ("refunded", "succeeded")


def test_a_late_success_of_an_earlier_failed_refund_is_not_taken_for_the_refund_owed_now(
    package, pending_refunds, operators, monkeypatch
):
    """re_1 succeeds, then fails; its "succeeded" event is delivered last, after re_2 failed too."""
    booking = cancelled(package)  # re_1 submitted
    first = Checkout.objects.get(booking=booking).provider_refund_id
    late_success = build_refund_event(Checkout.objects.get(booking=booking), status="succeeded")
    assert deliver(booking, "failed", failure_reason="expired_or_canceled_card").result == "refund_failed"
    SandboxProvider.settle_refund(first, "failed")
    monkeypatch.setattr(PendingRefundProvider, "refund_status", "failed")
    assert retry_refund(booking.pk, operator=True) == "exhausted"
    second = Checkout.objects.get(booking=booking).provider_refund_id
    assert second not in ("", first)
    assert receive_payment_event(*late_success, provider_name="sandbox").result == "superseded_refund"
    assert state_of(booking) == ("refund_pending", "exhausted")
    assert Checkout.objects.get(booking=booking).failed_refund_ids == [first, second]
    assert gave_up_alerts(booking) == 2  # each failed refund is news to the operators
    # nor is a late answer for it recorded over a new claim
    assert Checkout.objects.claim_refund_retry(Checkout.objects.get(booking=booking).pk, operator=True)
    with transaction.atomic():
        assert not Checkout.objects.record_refund(
            Checkout.objects.get(booking=booking).pk, ProviderRefund(first, "succeeded"), was="pending"
        )


def test_refunds_with_long_ids_are_told_each_under_its_own_subject(package, pending_refunds, operators):
    """A provider id may be 255 characters, a notice's subject 100: two long ids sharing a prefix must not
    share a notice (the second dropped), nor overflow the column (a 400, the event retried for ever)."""
    booking = cancelled(package)
    first, second = "re_" + "x" * 200 + "1", "re_" + "x" * 200 + "2"
    assert deliver(booking, "failed").result == "refund_failed"
    assert deliver(booking, "succeeded", refund_id=first).result == "refunded"
    assert deliver(booking, "failed", refund_id=first).result == "refund_failed"
    assert deliver(booking, "succeeded", refund_id=second).result == "refunded"
    refunded = Notification.objects.filter(kind="booking_refunded").values_list("subject", flat=True)
    assert len(set(refunded)) == 2 and all(len(subject) <= 100 for subject in refunded)
    assert gave_up_alerts(booking) == 2


def test_a_refund_given_up_on_twice_alerts_the_operators_twice(package, pending_refunds, operators):
    booking = cancelled(package)
    assert deliver(booking, "failed").result == "refund_failed"
    assert gave_up_alerts(booking) == 1
    assert deliver(booking, "succeeded", refund_id="re_dashboard").result == "refunded"  # refunded by hand
    assert deliver(booking, "failed", refund_id="re_dashboard").result == "refund_failed"  # and that failed too
    assert state_of(booking) == ("refund_pending", "exhausted")
    assert gave_up_alerts(booking) == 2


def test_a_refund_that_fails_after_it_succeeded_is_owed_again(package, recording_provider, operators):
    booking = cancelled(package)
    assert state_of(booking) == ("refunded", "succeeded")
    assert deliver(booking, "failed", failure_reason="lost_or_stolen_card").result == "refund_failed"
    assert state_of(booking) == ("refund_pending", "exhausted")
    assert Booking.objects.get(pk=booking.pk).refunded_at is None
    assert gave_up_alerts(booking) == 1
    # an older "succeeded" delivered late changes nothing: a failed refund does not come back
    assert deliver(booking, "succeeded").result == "superseded_refund"
    assert state_of(booking) == ("refund_pending", "exhausted")
    assert drift() == ""


def customer_news(booking):
    """What the customer is told about the booking's refunds, in the order it was owed, with how far it went."""
    about = f"booking:{booking.pk}:refund:"
    notices = Notification.objects.filter(subject__startswith=about, recipients=[booking.customer_email])
    return list(notices.order_by("pk").values_list("kind", "subject", "status"))


def send_owed():
    from core.notifications import send

    for pk in Notification.objects.filter(status="pending").order_by("pk").values_list("pk", flat=True):
        send(pk)


def test_the_customer_told_of_a_refund_that_then_failed_is_told_so_and_told_again_when_it_is_made(
    package, recording_provider, operators
):
    booking = cancelled(package)
    first = Checkout.objects.get(booking=booking).provider_refund_id
    send_owed()  # "refunded" went out
    assert customer_news(booking) == [("booking_refunded", f"booking:{booking.pk}:refund:{first}", "sent")]

    assert deliver(booking, "failed", failure_reason="lost_or_stolen_card").result == "refund_failed"
    assert deliver(booking, "failed").result == "superseded_refund"  # its twin tells no one again
    SandboxProvider.settle_refund(first, "failed")
    assert retry_refund(booking.pk, operator=True) == "succeeded"  # the operator's retry: a new refund
    second = Checkout.objects.get(booking=booking).provider_refund_id
    assert customer_news(booking) == [
        ("booking_refunded", f"booking:{booking.pk}:refund:{first}", "sent"),
        ("refund_reversed", f"booking:{booking.pk}:refund:{first}", "pending"),
        ("booking_refunded", f"booking:{booking.pk}:refund:{second}", "pending"),
    ]
    assert gave_up_alerts(booking) == 1  # the operators: once, for the failed refund


def test_a_refunded_e_mail_not_yet_out_when_its_refund_fails_is_withdrawn_never_sent_after(
    package, recording_provider, settings
):
    """Regression: the "refunded" e-mail met a refusing mail server (its job retried minutes later); the
    refund failed meanwhile; the retry then told the customer "refunded", after the news that it was not."""
    from core.notifications import MailRefused, send

    booking = cancelled(package)
    first = Checkout.objects.get(booking=booking).provider_refund_id
    refunded = Notification.objects.get(kind="booking_refunded")
    settings.EMAIL_BACKEND = "tests.bookings.providers.RefusingEmailBackend"
    with pytest.raises(MailRefused):
        send(refunded.pk)  # back to pending, for the job's retry
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"

    assert deliver(booking, "failed").result == "refund_failed"
    assert send(refunded.pk) is False  # the job's retry sends nothing
    assert mail.outbox == []  # never told it was refunded, so nothing to take back either
    assert customer_news(booking) == [("booking_refunded", f"booking:{booking.pk}:refund:{first}", "superseded")]


def test_a_refunded_e_mail_being_sent_when_its_refund_fails_is_withdrawn_and_the_failure_told(
    package, recording_provider
):
    """The worker claimed the "refunded" e-mail (it may be on the wire) when the failure comes: it is not
    retried should the mail server refuse it, and the customer is told the refund did not go through."""
    booking = cancelled(package)
    first = Checkout.objects.get(booking=booking).provider_refund_id
    refunded = Notification.objects.get(kind="booking_refunded")
    assert Notification.objects.claim(refunded.pk) is not None  # sending
    assert deliver(booking, "failed").result == "refund_failed"
    assert not Notification.objects.release(refunded.pk, error="SMTP 451", final=False)  # no retry now
    assert not Notification.objects.mark_sent(refunded.pk)
    assert customer_news(booking) == [
        ("booking_refunded", f"booking:{booking.pk}:refund:{first}", "superseded"),
        ("refund_reversed", f"booking:{booking.pk}:refund:{first}", "pending"),
    ]


@pytest.mark.parametrize("status, reversal", [("sent", True), ("pending", False)])
def test_a_refunded_e_mail_recorded_before_refund_news_were_keyed_by_refund_is_taken_back_too(
    package, recording_provider, status, reversal
):
    """Rows owed before this change are keyed ``booking:<id>`` (one per booking): still withdrawn or
    followed by the reversal."""
    booking = cancelled(package)
    Notification.objects.filter(kind="booking_refunded").update(subject=f"booking:{booking.pk}")
    if status == "sent":
        notice = Notification.objects.get(kind="booking_refunded")
        Notification.objects.claim(notice.pk)
        Notification.objects.mark_sent(notice.pk)
    assert deliver(booking, "failed").result == "refund_failed"
    legacy = Notification.objects.get(kind="booking_refunded")
    assert legacy.status == ("sent" if status == "sent" else "superseded")
    assert Notification.objects.filter(kind="refund_reversed").exists() is reversal


@pytest.mark.django_db(transaction=True)
def test_a_refund_failure_that_waited_for_the_workers_claim_judges_the_e_mail_as_the_claim_left_it(
    tenant, recording_provider
):
    """Forced interleaving: the worker's claim of the "refunded" e-mail holds its row (pending -> sending, not
    yet committed) when the refund's failure arrives; the failure waits for that row, then finds it being
    sent: withdrawn (no retry), and the customer told the refund did not go through."""
    booking = cancelled(PackageFactory(tenant=tenant))
    refunded = Notification.objects.get(kind="booking_refunded")
    outcome = attempted_while_held(
        lambda: Notification.objects.claim(refunded.pk), lambda _i: deliver(booking, "failed").result
    )
    assert outcome.value == "refund_failed", outcome
    assert [kind_status[0::2] for kind_status in customer_news(booking)] == [
        ("booking_refunded", "superseded"),
        ("refund_reversed", "pending"),
    ]


def test_a_refund_event_before_the_answer_is_recorded_by_the_payment_and_the_answer_then_changes_nothing(
    package, recording_provider
):
    booking = paid(package)
    with transaction.atomic():  # the cancel committed its claim; its provider call not answered yet
        Booking.objects.cancel(booking.pk)
        Checkout.objects.request_refund(booking.checkout.pk)
    assert deliver(booking, "pending", refund_id="re_early").result == "refund_submitted"
    assert deliver(booking, "succeeded", refund_id="re_early").result == "refunded"
    assert refund_booking(booking.pk) is None  # no longer pending: the provider is not asked
    assert recording_provider.refunds == []
    checkout = Checkout.objects.get(booking=booking)
    assert (checkout.refund_state, checkout.provider_refund_id) == ("succeeded", "re_early")
    # the answer, had it come back, is not recorded over the event's refund
    with transaction.atomic():
        assert not Checkout.objects.record_refund(checkout.pk, ProviderRefund("re_other", "succeeded"), was="pending")


def test_an_event_for_another_refund_is_never_recorded_over_the_one_submitted(package, pending_refunds):
    booking = cancelled(package)
    checkout = Checkout.objects.get(booking=booking)
    with transaction.atomic():
        assert not Checkout.objects.record_refund(checkout.pk, ProviderRefund("re_other", "failed"), was="submitted")
        assert not Checkout.objects.record_refund(checkout.pk, ProviderRefund("re_other", "succeeded"), was="submitted")
    assert Checkout.objects.get(pk=checkout.pk).provider_refund_id == checkout.provider_refund_id
    assert state_of(booking) == ("refund_pending", "submitted")


@pytest.mark.parametrize("event_type", ["refund.created", "refund.updated", "charge.refund.updated"])
@pytest.mark.parametrize("exhausted", [False, True])
def test_a_refund_whose_answer_was_lost_is_recorded_from_its_event(
    package, settings, recording_provider, exhausted, event_type
):
    settings.PAYMENT_PROVIDER = "tests.bookings.providers.LostAnswerRefundProvider"
    settings.REFUND_MAX_ATTEMPTS = 1 if exhausted else 8
    booking = cancelled(package)
    assert state_of(booking) == ("refund_pending", "exhausted" if exhausted else "failed")
    made = SandboxProvider().find_refund(Checkout.objects.get(booking=booking))
    assert deliver(booking, "succeeded", refund_id=made.id, event_type=event_type).result == "refunded"
    assert state_of(booking) == ("refunded", "succeeded")
    assert Checkout.objects.get(booking=booking).provider_refund_id == made.id
    assert Checkout.objects.refunds_to_retry(operator=True).filter(booking=booking).count() == 0  # nothing to retry
    assert drift() == ""


def test_a_refund_of_our_payment_that_lockstep_did_not_ask_for_is_for_review(package):
    booking = paid(package)  # confirmed, nothing owed: refunded from the provider's dashboard
    result = deliver(booking, "succeeded", refund_id="re_dashboard")
    assert result.result == "unrequested_refund"
    event = PaymentEvent.objects.get(event_id=result.event_id)
    assert event.needs_review and event.booking_id == booking.pk
    assert state_of(booking) == ("confirmed", "")


def test_a_partial_refund_is_for_review_and_changes_nothing(package, pending_refunds):
    booking = cancelled(package)
    checkout = Checkout.objects.get(booking=booking)
    payload, signature = build_refund_event(checkout, status="succeeded")
    data = json.loads(payload)
    data["data"]["object"]["amount"] = 5000
    payload = json.dumps(data).encode()
    from bookings.payments.base import sign

    result = receive_payment_event(payload, sign(payload), provider_name="sandbox")
    assert result.result == "mismatch_amount"
    assert PaymentEvent.objects.get(event_id=result.event_id).needs_review
    assert state_of(booking) == ("refund_pending", "submitted")


def test_a_refund_of_a_payment_not_ours_is_stored_and_ignored(package):
    booking = paid(package)
    checkout = Checkout.objects.get(booking=booking)
    checkout.provider_payment_id = "pi_someone_else"  # an unsaved copy: only the event carries it
    result = sandbox_deliver_refund(checkout, status="succeeded", refund_id="re_elsewhere")
    assert result.result == "unknown_refund" and result.booking_id is None
    assert not PaymentEvent.objects.get(event_id=result.event_id).needs_review


# --- the database refuses what no path may do ---------------------------------------------------


@pytest.mark.parametrize(
    "was, becomes",
    [("submitted", "failed"), ("submitted", "pending"), ("exhausted", "failed"), ("succeeded", "submitted")],
)
def test_the_refund_machine_refuses_what_no_path_does(package, pending_refunds, was, becomes):
    booking = cancelled(package)  # submitted
    if was != "submitted":
        Checkout.objects.filter(booking=booking).update(refund_state=was)  # a move the machine allows
    with pytest.raises(IntegrityError), transaction.atomic():
        Checkout.objects.filter(booking=booking).update(refund_state=becomes)


def test_the_invariant_names_a_booking_refunded_without_its_refund(package):
    booking = paid(package)
    Booking.objects.filter(pk=booking.pk).update(status="refund_pending")  # a legal move, without the refund owed
    assert f"booking {booking.pk} is refund_pending, refund is none" in drift()


# --- races --------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_refunds_events_and_its_answer_racing_refund_the_booking_once(tenant, pending_refunds):
    """A dozen deliveries of "succeeded" (Stripe retries, both event names) beside the provider's answer."""
    booking = paid(PackageFactory(tenant=tenant))
    with transaction.atomic():
        Booking.objects.cancel(booking.pk)
        Checkout.objects.request_refund(booking.checkout.pk)
    checkout = Checkout.objects.get(booking=booking)
    refund_id = "re_raced"
    events = [build_refund_event(checkout, status="succeeded", refund_id=refund_id) for _ in range(11)]
    answer = ProviderRefund(refund_id, "pending")

    def attempt(i):
        if i == len(events):  # the provider's answer to the claim, recorded as refund_booking does
            with transaction.atomic():
                Booking.objects.lock_row(booking.pk)
                return (
                    "answer recorded"
                    if Checkout.objects.record_refund(checkout.pk, answer, was="pending")
                    else "answer late"
                )
        return receive_payment_event(*events[i], provider_name="sandbox").result

    outcomes = run_concurrently(attempt, len(events) + 1)
    counts = tally(outcomes)
    assert all(outcome.error is None for outcome in outcomes), outcomes
    results = [outcome.value for outcome in outcomes]
    assert results.count("refunded") == 1, results
    assert set(results) <= {"refunded", "unchanged", "refund_submitted", "answer recorded", "answer late"}, counts
    assert state_of(booking) == ("refunded", "succeeded")
    assert Checkout.objects.get(pk=checkout.pk).provider_refund_id == refund_id
    assert Notification.objects.filter(kind="booking_refunded").count() == 1
    assert drift() == ""


def test_a_submitted_refund_whose_event_never_comes_is_looked_up_by_the_sweep(package, pending_refunds):
    booking = cancelled(package)
    checkout = Checkout.objects.get(booking=booking)

    def sweep():
        out = io.StringIO()
        call_command("retry_refunds", stdout=out)
        return out.getvalue()

    assert "settled by asking the provider: 0" in sweep() and pending_refunds.got == []  # its event may still come
    Checkout.objects.filter(pk=checkout.pk).update(next_retry_at=Now())
    assert "settled by asking the provider: 0" in sweep()  # asked: still pending at the provider
    assert pending_refunds.got == [booking.pk]
    assert Checkout.objects.filter(pk=checkout.pk, next_retry_at__gt=Now()).exists()  # asked again later
    assert state_of(booking) == ("refund_pending", "submitted")

    SandboxProvider.settle_refund(checkout.provider_refund_id, "succeeded")
    Checkout.objects.filter(pk=checkout.pk).update(next_retry_at=Now())
    assert "settled by asking the provider: 1" in sweep()
    assert state_of(booking) == ("refunded", "succeeded")
    assert drift() == ""


@pytest.mark.django_db(transaction=True)
def test_a_refund_still_not_through_days_after_it_was_asked_for_is_told_to_the_operators_once(
    tenant, pending_refunds, operators, monkeypatch
):
    """Regression: a refund left pending at the provider (requires_action never completed), or never
    answered for, was looked up every hour for ever, and no one told. (Committed transactions, as the
    worker runs it: the alert's statement needs one of its own.)"""
    booking = cancelled(PackageFactory(tenant=tenant))
    checkout = Checkout.objects.get(booking=booking)

    def sweep():
        Checkout.objects.filter(pk=checkout.pk).update(next_retry_at=Now())
        call_command("retry_refunds", stdout=io.StringIO())

    def stuck_alerts():
        return list(Notification.objects.filter(kind="refund_stuck").values_list("subject", flat=True))

    sweep()
    assert stuck_alerts() == []  # asked for just now: its event may still come
    Checkout.objects.filter(pk=checkout.pk).update(refund_requested_at=Now() - timedelta(days=3, minutes=1))
    sweep()
    sweep()
    assert stuck_alerts() == [f"booking:{booking.pk}:stuck-refund:{checkout.provider_refund_id}"]  # once

    def unanswered(provider, checkout):
        raise ProviderError("timeout")

    monkeypatch.setattr(PendingRefundProvider, "get_refund", unanswered)
    sweep()  # no answer from the provider: still told once, still looked up
    assert len(stuck_alerts()) == 1 and state_of(booking) == ("refund_pending", "submitted")


@pytest.mark.django_db(transaction=True)
def test_sweeps_looking_up_a_submitted_refund_at_once_ask_the_provider_once(tenant, pending_refunds):
    booking = cancelled(PackageFactory(tenant=tenant))
    checkout = Checkout.objects.get(booking=booking)
    SandboxProvider.settle_refund(checkout.provider_refund_id, "succeeded")
    Checkout.objects.filter(pk=checkout.pk).update(next_retry_at=Now())
    outcomes = run_concurrently(lambda i: check_submitted_refunds().done, 6)
    assert sorted(outcome.value for outcome in outcomes) == [0, 0, 0, 0, 0, 1], outcomes
    assert pending_refunds.got == [booking.pk]
    assert state_of(booking) == ("refunded", "succeeded")
    assert Notification.objects.filter(kind="booking_refunded").count() == 1


# --- the Stripe adapter -------------------------------------------------------------------------


class FakeRefunds:
    """Stripe's refunds resource as the adapter calls it (no network)."""

    def __init__(self, created=None, listed=()):
        self.created, self.listed, self.calls = created, list(listed), []

    def create(self, params, options):
        self.calls.append((params, options))
        return self.created

    def list(self, params):
        return SimpleNamespace(data=self.listed)


def stripe_with(refunds):
    provider = StripeProvider.__new__(StripeProvider)
    import stripe

    provider.stripe = stripe
    provider.client = SimpleNamespace(v1=SimpleNamespace(refunds=refunds))
    return provider


@pytest.mark.parametrize(
    "status, outcome",
    [("succeeded", "succeeded"), ("pending", "pending"), ("requires_action", "pending"), ("failed", "failed"),
     ("canceled", "failed"), ("something_new", "pending")],
)  # fmt: skip
def test_stripe_refund_statuses_are_read_as_outcomes(status, outcome):
    refunds = FakeRefunds(created=SimpleNamespace(id="re_1", status=status, failure_reason=None))
    checkout = SimpleNamespace(provider_payment_id="pi_1")
    assert stripe_with(refunds).refund(checkout, idempotency_key="k") == ProviderRefund("re_1", outcome)
    assert refunds.calls == [({"payment_intent": "pi_1"}, {"idempotency_key": "k"})]


def stripe_refund(refund_id, status, *, amount=10000, currency="usd", failure_reason=None):
    return SimpleNamespace(id=refund_id, status=status, amount=amount, currency=currency, failure_reason=failure_reason)


def test_stripe_find_refund_takes_only_a_full_refund_not_failed_or_canceled():
    listed = [
        stripe_refund("re_failed", "failed", failure_reason="lost_or_stolen_card"),
        stripe_refund("re_canceled", "canceled"),
        stripe_refund("re_goodwill", "succeeded", amount=2000),  # part of it, from the dashboard
        stripe_refund("re_other_currency", "succeeded", currency="eur"),
        stripe_refund("re_on_its_way", "pending"),
    ]
    checkout = SimpleNamespace(provider_payment_id="pi_1", amount=Decimal("100.00"), currency="USD")
    assert stripe_with(FakeRefunds(listed=listed)).find_refund(checkout) == ProviderRefund("re_on_its_way", "pending")
    assert stripe_with(FakeRefunds(listed=listed[:4])).find_refund(checkout) is None


def test_a_refund_looked_up_past_the_key_window_is_never_a_partial_one_from_the_dashboard(package, monkeypatch):
    """Regression: a 20.00 goodwill refund made in the dashboard was taken for the 100.00 refund owed, when
    its retry came more than a day after the first ask: the booking refunded, 80.00 never paid back."""
    booking = paid(package)
    with transaction.atomic():  # cancelled, its refund claimed; the first call died a day ago
        Booking.objects.cancel(booking.pk)
        Checkout.objects.request_refund(booking.checkout.pk)
    Checkout.objects.filter(booking=booking).update(refund_requested_at=Now() - timedelta(hours=25))
    refunds = FakeRefunds(
        created=stripe_refund("re_full", "succeeded"), listed=[stripe_refund("re_goodwill", "succeeded", amount=2000)]
    )
    monkeypatch.setattr(services, "provider_for", lambda name: stripe_with(refunds))

    assert refund_booking(booking.pk) == "succeeded"
    checkout = Checkout.objects.get(booking=booking)
    assert (checkout.provider_refund_id, len(refunds.calls)) == ("re_full", 1)  # asked for the refund owed
    assert state_of(booking) == ("refunded", "succeeded")


def test_a_refund_event_is_read_as_its_refund():
    payload = json.dumps(
        {
            "id": "evt_1",
            "type": "refund.failed",
            "data": {
                "object": {
                    "id": "re_1",
                    "object": "refund",
                    "payment_intent": "pi_1",
                    "status": "failed",
                    "failure_reason": "expired_or_canceled_card",
                    "amount": 10000,
                    "currency": "usd",
                }
            },
        }
    ).encode()
    event = parse_event(payload)
    assert (event.refund_id, event.refund_status, event.failure_reason) == (
        "re_1",
        "failed",
        "expired_or_canceled_card",
    )
    assert (event.checkout_id, event.payment_id, event.amount_total, event.currency) == ("", "pi_1", 10000, "usd")


# --- the operator console -----------------------------------------------------------------------


def test_the_admin_says_how_far_each_refund_went(admin_client, package, pending_refunds, operators, monkeypatch):
    from tests.bookings.test_admin import act, messages_of

    booking = paid(package)
    msgs = messages_of(act(admin_client, "cancel_selected", booking))
    assert any("is submitted, and the booking is refunded when the payment provider confirms it" in m for m in msgs)
    deliver(booking, "failed", failure_reason="expired_or_canceled_card")

    monkeypatch.setattr(PendingRefundProvider, "refund_status", "failed")  # the new refund fails at once too
    SandboxProvider.settle_refund(Checkout.objects.get(booking=booking).provider_refund_id, "failed")
    msgs = messages_of(act(admin_client, "retry_refund_selected", booking))
    assert any("the payment provider refused again (refund re_sandbox_" in m and "act on it" in m for m in msgs), msgs
    assert any("1 refund asked for again" in m for m in msgs), msgs
    assert state_of(booking) == ("refund_pending", "exhausted")


@pytest.mark.django_db(transaction=True)
def test_every_writer_of_a_lost_refund_racing_records_it_once(tenant, settings, admin_user):
    """The refund was made but its answer lost (refund ``exhausted``): its events, the look-up sweep, the command,
    the admin's retry and a direct operator retry, at once. One refund at the provider, recorded once."""
    from django.test import Client

    from tests.bookings.providers import RecordingProvider

    settings.PAYMENT_PROVIDER = "tests.bookings.providers.LostAnswerRefundProvider"
    settings.REFUND_MAX_ATTEMPTS = 1
    booking = cancelled(PackageFactory(tenant=tenant))
    checkout = Checkout.objects.get(booking=booking)
    assert checkout.refund_state == "exhausted"
    made = SandboxProvider().find_refund(checkout)
    settings.PAYMENT_PROVIDER = "tests.bookings.providers.RecordingProvider"  # the provider answers again
    RecordingProvider.reset()
    events = [build_refund_event(checkout, status="succeeded", refund_id=made.id) for _ in range(3)]
    admin = Client()
    admin.force_login(admin_user)
    writers = [
        *[lambda i=i: receive_payment_event(*events[i], provider_name="sandbox").result for i in range(3)],
        lambda: check_submitted_refunds().done,
        lambda: call_command("retry_refunds", stdout=io.StringIO(), stderr=io.StringIO()),
        lambda: (
            admin.post(
                "/admin/bookings/booking/",
                {"action": "retry_refund_selected", "apply": "1", "_selected_action": [booking.pk]},
            ).status_code
        ),
        lambda: retry_refund(booking.pk, operator=True),
    ]
    outcomes = run_concurrently(lambda i: writers[i](), len(writers))
    assert all(outcome.error is None for outcome in outcomes), outcomes
    assert state_of(booking) == ("refunded", "succeeded")
    assert Checkout.objects.get(pk=checkout.pk).provider_refund_id == made.id
    # at most one retrier asked (the key replays the refund made), and no second refund exists
    assert len(RecordingProvider.refunds) <= 1
    payment = SandboxProvider._payment(checkout)
    assert {answer.id for (paid, _key), answer in SandboxProvider._by_key.items() if paid == payment} == {made.id}
    assert Notification.objects.filter(kind="booking_refunded").count() == 1
    assert drift() == ""


@pytest.mark.django_db(transaction=True)
def test_a_refund_event_that_waited_for_the_answer_being_recorded_is_judged_on_the_row_it_then_locks(
    tenant, recording_provider
):
    """The event reads the refund ``pending`` (no refund id yet) and waits for the booking row the provider's
    answer holds while it records ``submitted``; once the answer commits, the event is matched against the
    row as locked (its refund, now recorded) and settles it: never judged on what it read before the wait."""
    from tests.races import Background, OpenTransaction, wait_until_blocked_or_done

    booking = paid(PackageFactory(tenant=tenant))
    with transaction.atomic():
        Booking.objects.cancel(booking.pk)
        Checkout.objects.request_refund(booking.checkout.pk)
    checkout = Checkout.objects.get(booking=booking)

    def answer():  # refund_booking's recording, held open
        Booking.objects.lock_row(booking.pk)
        return Checkout.objects.record_refund(checkout.pk, ProviderRefund("re_1", "pending"), was="pending")

    holder = OpenTransaction(answer).start()
    event = Background(
        lambda: receive_payment_event(*build_refund_event(checkout, status="succeeded", refund_id="re_1"))
    )
    try:
        assert wait_until_blocked_or_done(event), "the event must wait for the booking row the answer holds"
        assert not event.done.is_set()
    finally:
        assert holder.commit() is True
        event.join()
    assert event.error is None, event.error
    assert event.result.result == "refunded"
    assert state_of(booking) == ("refunded", "succeeded")
    assert drift() == ""
