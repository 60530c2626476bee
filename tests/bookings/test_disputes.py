"""A dispute (a chargeback) of a booking's payment: recorded against the booking, told to the operators.

Stripe sends ``charge.dispute.created`` when the customer's bank disputes a payment, then
``.updated``, ``.funds_withdrawn``, ``.funds_reinstated`` and ``.closed`` (``won``, ``lost``, or a
warning closed). The booking is not changed by any of them (whether it stands is the operator's
call); an opened or lost dispute is flagged for review, and the operators are told when one opens
and when it closes, once each.
"""

import json
import threading

import pytest
from django.core import mail

from bookings import services
from bookings.models import Booking, Checkout, PaymentEvent
from bookings.payments.sandbox import build_dispute_event
from bookings.services import receive_payment_event, sandbox_deliver
from core.models import Notification
from core.notifications import send
from tests.bookings.factories import PackageFactory, book
from tests.bookings.test_webhooks import deliver
from tests.races import Background, Outcome, run_concurrently, tally, wait_until_blocked_or_done


@pytest.fixture
def package(tenant):
    return PackageFactory(tenant=tenant)


@pytest.fixture
def operators(settings):
    settings.OPERATOR_EMAILS = ["ops@example.com"]


def paid(package):
    booking = book(package)
    assert sandbox_deliver(booking.checkout, "checkout.session.completed").result == "confirmed"
    return Booking.objects.select_related("checkout").get(pk=booking.pk)


def dispute(booking, event_type="charge.dispute.created", **kwargs):
    return receive_payment_event(*build_dispute_event(booking.checkout, event_type, **kwargs), provider_name="sandbox")


def flagged(result):
    return PaymentEvent.objects.get(event_id=result.event_id).needs_review


def alerts(booking):
    about = f"booking:{booking.pk}:dispute:"
    return list(Notification.objects.filter(subject__startswith=about).order_by("pk").values_list("kind", flat=True))


def unchanged(booking):
    now = Booking.objects.select_related("checkout").get(pk=booking.pk)
    return (now.status, now.version, now.checkout.refund_state) == (
        booking.status,
        booking.version,
        booking.checkout.refund_state,
    )


def test_a_dispute_is_recorded_against_its_booking_flagged_and_told_when_it_opens_and_closes(package, operators):
    booking = paid(package)

    opened = dispute(booking)
    assert (opened.result, opened.booking_id, flagged(opened)) == ("dispute_opened", booking.pk, True)
    for news in ("charge.dispute.updated", "charge.dispute.funds_withdrawn"):
        result = dispute(booking, news, status="under_review")
        assert result.result == news.replace("charge.", "").replace(".", "_") and not flagged(result)
    lost = dispute(booking, "charge.dispute.closed", status="lost")
    assert (lost.result, flagged(lost)) == ("dispute_lost", True)
    assert unchanged(booking)  # the booking is the operator's call
    assert alerts(booking) == ["dispute_opened", "dispute_closed"]

    for notification in Notification.objects.filter(kind__startswith="dispute_").order_by("pk"):
        send(notification.pk)
    opened_mail, closed_mail = mail.outbox
    assert opened_mail.to == ["ops@example.com"]
    assert opened_mail.subject.startswith(f"The payment of booking #{booking.pk} is disputed: answer by 20")
    assert "disputes 100.00 USD" in opened_mail.body and "reason given: fraudulent" in opened_mail.body
    lost_outcome = "lost, the money went back to the customer"
    assert closed_mail.subject == f"The dispute of booking #{booking.pk} is closed: {lost_outcome}"


def test_a_won_dispute_is_told_and_needs_no_review(package, operators):
    booking = paid(package)
    dispute(booking)
    won = dispute(booking, "charge.dispute.closed", status="won")
    assert (won.result, flagged(won)) == ("dispute_won", False)
    assert alerts(booking) == ["dispute_opened", "dispute_closed"]
    assert unchanged(booking)


def test_a_disputes_opening_delivered_after_its_close_asks_no_one_for_evidence(package, operators):
    """Stripe keeps no order, and retries a failed delivery for days."""
    booking = paid(package)
    late_opening = build_dispute_event(booking.checkout, "charge.dispute.created")
    assert dispute(booking, "charge.dispute.closed", status="won").result == "dispute_won"
    result = receive_payment_event(*late_opening, provider_name="sandbox")
    assert (result.result, flagged(result)) == ("superseded_dispute", False)
    assert alerts(booking) == ["dispute_closed"]
    # another dispute of the same payment still opens
    assert dispute(booking, dispute_id="dp_sandbox_2").result == "dispute_opened"


def test_a_dispute_of_part_of_the_payment_fits_and_one_of_more_or_another_currency_does_not(package, operators):
    booking = paid(package)
    assert dispute(booking, amount=2500, dispute_id="dp_part").result == "dispute_opened"
    for wrong in (10001, 0, -5, True):
        result = dispute(booking, amount=wrong, dispute_id=f"dp_{wrong}")
        assert (result.result, flagged(result)) == ("mismatch_amount", True)
    payload, signature = build_dispute_event(booking.checkout, "charge.dispute.created", dispute_id="dp_eur")
    body = json.loads(payload)
    body["data"]["object"]["currency"] = "eur"
    result = receive_payment_event(*resigned(body), provider_name="sandbox")
    assert (result.result, flagged(result)) == ("mismatch_currency", True)
    assert alerts(booking) == ["dispute_opened"]  # only the one that fits
    assert unchanged(booking)


def resigned(body):
    from bookings.payments.base import sign

    payload = json.dumps(body).encode()
    return payload, sign(payload)


def test_a_dispute_of_a_payment_not_ours_is_flagged(package, operators):
    booking = paid(package)
    checkout = booking.checkout
    checkout.provider_payment_id = "pi_someone_else"  # an unsaved copy: only the event carries it
    result = receive_payment_event(*build_dispute_event(checkout, "charge.dispute.created"), provider_name="sandbox")
    assert (result.result, result.booking_id, flagged(result)) == ("unknown_dispute", None, True)
    assert alerts(booking) == []


def test_a_dispute_with_an_evidence_date_out_of_range_is_told_without_it(package, operators):
    booking = paid(package)
    payload, _ = build_dispute_event(booking.checkout, "charge.dispute.created")
    body = json.loads(payload)
    body["data"]["object"]["evidence_details"] = {"due_by": 10**30}
    assert receive_payment_event(*resigned(body), provider_name="sandbox").result == "dispute_opened"
    body["id"], body["data"]["object"]["id"] = "evt_no_details", "dp_2"
    body["data"]["object"]["evidence_details"] = "soon"
    assert receive_payment_event(*resigned(body), provider_name="sandbox").result == "dispute_opened"
    contexts = Notification.objects.filter(kind="dispute_opened").values_list("context", flat=True)
    assert [context["due_by"] for context in contexts] == ["-", "-"]


def test_the_webhook_answers_a_dispute_with_its_result(client, package, operators):
    booking = paid(package)
    payload, _ = build_dispute_event(booking.checkout, "charge.dispute.created")
    response = deliver(client, payload)
    assert response.status_code == 200 and response.json()["result"] == "dispute_opened"
    assert alerts(booking) == ["dispute_opened"]


@pytest.mark.django_db(transaction=True)
def test_a_dispute_delivered_again_and_again_at_once_is_recorded_and_told_once(tenant, operators):
    """Stripe's retries of one event beside its twin (another event id for the same news), at once."""
    booking = paid(PackageFactory(tenant=tenant))
    event = build_dispute_event(booking.checkout, "charge.dispute.created")
    twin = build_dispute_event(booking.checkout, "charge.dispute.created")

    def attempt(i):
        result = receive_payment_event(*(twin if i == 0 else event), provider_name="sandbox")
        return result.result, result.duplicate

    outcomes = run_concurrently(attempt, 8)
    assert all(outcome.error is None for outcome in outcomes), tally(outcomes)
    values = [outcome.value for outcome in outcomes]
    assert values.count(("dispute_opened", False)) == 2, values  # the event once, its twin once
    assert values.count(("dispute_opened", True)) == 6, values  # the retries: duplicates
    assert alerts(booking) == ["dispute_opened"]
    assert PaymentEvent.objects.filter(booking=booking, result="dispute_opened").count() == 2
    assert Checkout.objects.get(pk=booking.checkout.pk).refund_state == booking.checkout.refund_state


@pytest.mark.django_db(transaction=True)
def test_a_disputes_opening_delivered_while_its_close_commits_waits_for_it_and_alerts_no_one(
    tenant, operators, monkeypatch
):
    """Forced interleaving: the close holds the dispute's lock, mid-transaction, while the opening arrives."""
    booking = paid(PackageFactory(tenant=tenant))
    closing = build_dispute_event(booking.checkout, "charge.dispute.closed", status="won")
    opening = build_dispute_event(booking.checkout, "charge.dispute.created")
    judged, go_on = threading.Event(), threading.Event()
    note = services._note_dispute

    def held_after_judging(event, checkout):
        result = note(event, checkout)
        if event.type == "charge.dispute.closed":
            judged.set()
            assert go_on.wait(10)
        return result

    monkeypatch.setattr(services, "_note_dispute", held_after_judging)
    close = Background(lambda: receive_payment_event(*closing, provider_name="sandbox").result)
    assert judged.wait(10)
    open_ = Background(lambda: receive_payment_event(*opening, provider_name="sandbox").result)
    blocked = wait_until_blocked_or_done(open_)
    go_on.set()
    assert (close.join().outcome, open_.join().outcome) == (
        Outcome("dispute_won", None),
        Outcome("superseded_dispute", None),
    )
    assert blocked  # it waited for the close's commit, on the dispute's lock
    assert alerts(booking) == ["dispute_closed"]
