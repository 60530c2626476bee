import json
import time
from datetime import timedelta

import pytest
import stripe
from django.db.models.functions import Now

from bookings.models import Booking, Checkout, PaymentEvent
from bookings.payments.base import parse_event, sign
from tests.bookings.factories import PackageFactory, book, hold_without_provider_answer

URL = "/api/webhooks/payments"


def event(
    event_type,
    checkout_id,
    *,
    event_id=None,
    reference="",
    payment_intent="pi_123",
    payment_status="paid",
    amount_total=10000,
    currency="usd",
    booking_id=None,
):
    """A Stripe-shaped checkout.session event; the defaults match a PackageFactory booking (100.00 USD)."""
    session = {
        "id": checkout_id,
        "object": "checkout.session",
        "client_reference_id": reference,
        "payment_intent": payment_intent,
        "payment_status": payment_status,
        "amount_total": amount_total,
        "currency": currency,
        "metadata": {} if booking_id is None else {"booking_id": str(booking_id)},
    }
    return json.dumps(
        {
            "id": event_id or f"evt_{time.monotonic_ns()}",
            "object": "event",
            "type": event_type,
            "data": {"object": session},
        }
    ).encode()


def completed_event(checkout_id, **kwargs):
    return event("checkout.session.completed", checkout_id, **kwargs)


def expired_event(checkout_id, **kwargs):
    kwargs.setdefault("payment_status", "unpaid")
    return event("checkout.session.expired", checkout_id, payment_intent=None, **kwargs)


def stripe_signed(payload, *, secret=None, timestamp=None):
    """The Stripe-Signature header the stripe library itself makes for ``payload``."""
    from django.conf import settings

    return stripe.WebhookSignature.generate_signature_header(
        payload.decode(), secret or settings.PAYMENT_WEBHOOK_SECRET, timestamp=timestamp
    )


def deliver(client, payload, signature=None):
    if signature is None:
        try:
            signature = stripe_signed(payload)
        except UnicodeDecodeError:  # bytes Stripe would never send: any well-formed header will do
            signature = f"t={int(time.time())},v1={'0' * 64}"
    return client.post(URL, data=payload, content_type="application/json", HTTP_STRIPE_SIGNATURE=signature)


def expire_hold(booking):
    Booking.objects.filter(pk=booking.pk).update(hold_expires_at=Now() - timedelta(seconds=1))


@pytest.fixture
def package(tenant):
    return PackageFactory(tenant=tenant)


def status_of(booking):
    return Booking.objects.get(pk=booking.pk).status


def test_completed_confirms_a_held_booking_and_a_repeat_is_a_harmless_200(client, package, recording_provider):
    booking = book(package)
    payload = completed_event(booking.checkout.provider_checkout_id, event_id="evt_1")
    first = deliver(client, payload)
    assert first.status_code == 200 and first.json() == {
        "received": True,
        "event": "evt_1",
        "duplicate": False,
        "result": "confirmed",
    }
    assert status_of(booking) == Booking.Status.CONFIRMED
    checkout = Checkout.objects.get(pk=booking.checkout.pk)
    assert (checkout.state, checkout.provider_payment_id) == ("completed", "pi_123")
    again = deliver(client, payload)
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert PaymentEvent.objects.get().deliveries == 2


@pytest.mark.parametrize(
    "signature",
    ["", "t=1,v1=deadbeef", "garbage", "v1=abc", None],
    ids=["missing", "wrong", "garbage", "no-timestamp", "stale"],
)
def test_bad_signature_is_400_and_nothing_is_stored(client, package, signature):
    booking = book(package)
    payload = completed_event(booking.checkout.provider_checkout_id)
    if signature is None:
        signature = sign(payload, timestamp=time.time() - 301)
    response = deliver(client, payload, signature)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_signature"
    assert not PaymentEvent.objects.exists()
    assert status_of(booking) == Booking.Status.HELD


def test_signature_with_another_secret_is_refused_but_a_rotated_pair_is_accepted(client, package):
    booking = book(package)
    payload = completed_event(booking.checkout.provider_checkout_id)
    old = sign(payload, secret="whsec_old").split(",v1=")[1]
    assert deliver(client, payload, sign(payload, secret="whsec_old")).status_code == 400
    assert deliver(client, payload, sign(payload) + f",v1={old}").status_code == 200


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[]",
        b"{}",
        b'{"id": "evt_1", "type": "checkout.session.completed"}',
        b'{"id": "evt_1", "type": "checkout.session.completed", "data": {"object": {"id": 5}}}',
        b'{"id": 7, "type": "x", "data": {"object": {"id": "cs"}}}',
        b"\xff\xfe",
    ],
)
def test_malformed_payload_is_400(client, db, payload):
    response = deliver(client, payload)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "malformed_event"
    assert not PaymentEvent.objects.exists()


@pytest.mark.parametrize("status", [{"state": "failed"}, ["failed"], 7, None])
def test_a_signed_refund_event_whose_status_is_not_text_is_read_as_pending_never_a_500(client, db, status):
    """Regression: an unhashable status (an object, a list) raised TypeError reading its outcome: a 500."""
    refund = {"id": "re_odd", "object": "refund", "payment_intent": "pi_1", "status": status, "amount": 100}
    payload = json.dumps({"id": "evt_odd", "type": "refund.updated", "data": {"object": refund}}).encode()
    assert parse_event(payload).refund_status == "pending"  # an unknown status waits, as an unknown word does
    response = deliver(client, payload)
    assert response.status_code == 200, response.content
    assert PaymentEvent.objects.filter(event_id="evt_odd", processed_at__isnull=False).exists()


def test_unknown_checkout_and_other_event_types_are_stored_and_acknowledged(client, db):
    assert deliver(client, completed_event("cs_nobody")).json()["result"] == "unknown_checkout"
    assert deliver(client, event("payment_intent.created", "pi_1")).json()["result"] == "ignored_type"
    assert PaymentEvent.objects.filter(processed_at__isnull=False).count() == 2


def test_completed_after_the_hold_expired_with_the_date_still_free_confirms(client, package, recording_provider):
    booking = book(package)
    expire_hold(booking)
    assert deliver(client, completed_event(booking.checkout.provider_checkout_id)).json()["result"] == "confirmed"
    assert status_of(booking) == Booking.Status.CONFIRMED
    assert recording_provider.refunds == []


def test_completed_after_the_date_was_taken_refunds_once(client, package, recording_provider):
    late = book(package)
    expire_hold(late)
    winner = book(package, late.date)  # the freed date went to someone else
    payload = completed_event(late.checkout.provider_checkout_id)
    assert deliver(client, payload).json()["result"] == "refund_pending"
    assert deliver(client, payload).json()["duplicate"] is True
    assert status_of(late) == Booking.Status.REFUNDED
    assert status_of(winner) == Booking.Status.HELD
    assert recording_provider.refunds == [late.pk]  # requested exactly once
    checkout = Checkout.objects.get(booking=late)
    assert checkout.refund_state == "succeeded" and checkout.provider_refund_id.startswith("re_sandbox_")


def test_expired_then_completed_confirms_when_free(client, package):
    booking = book(package)
    checkout_id = booking.checkout.provider_checkout_id
    assert deliver(client, expired_event(checkout_id)).json()["result"] == "released"
    assert status_of(booking) == Booking.Status.EXPIRED
    assert deliver(client, completed_event(checkout_id)).json()["result"] == "confirmed"
    assert status_of(booking) == Booking.Status.CONFIRMED
    assert Checkout.objects.get(booking=booking).state == "completed"


def test_expired_then_completed_refunds_when_the_date_was_taken(client, package, recording_provider):
    booking = book(package)
    checkout_id = booking.checkout.provider_checkout_id
    deliver(client, expired_event(checkout_id))
    book(package, booking.date)
    assert deliver(client, completed_event(checkout_id)).json()["result"] == "refund_pending"
    assert status_of(booking) == Booking.Status.REFUNDED
    assert recording_provider.refunds == [booking.pk]


def test_completed_then_expired_stays_confirmed(client, package):
    booking = book(package)
    checkout_id = booking.checkout.provider_checkout_id
    deliver(client, completed_event(checkout_id))
    assert deliver(client, expired_event(checkout_id)).json()["result"] == "unchanged"
    assert status_of(booking) == Booking.Status.CONFIRMED
    assert Checkout.objects.get(booking=booking).state == "completed"


def test_payment_for_a_checkout_whose_provider_answer_was_lost_is_matched_by_reference(client, package):
    booking = hold_without_provider_answer(package)
    assert Checkout.objects.get(pk=booking.checkout.pk).state == "creating"
    payload = completed_event("cs_lost", reference=str(booking.checkout.pk), booking_id=booking.pk)
    assert deliver(client, payload).json()["result"] == "confirmed"
    assert status_of(booking) == Booking.Status.CONFIRMED


def test_failed_refund_is_retried_by_the_command(client, package, settings):
    from django.core.management import call_command

    settings.PAYMENT_PROVIDER = "tests.bookings.providers.RefundDownProvider"
    late = book(package)
    expire_hold(late)
    book(package, late.date)
    deliver(client, completed_event(late.checkout.provider_checkout_id))
    checkout = Checkout.objects.get(booking=late)
    assert status_of(late) == Booking.Status.REFUND_PENDING
    assert (checkout.refund_state, checkout.refund_attempts, checkout.refund_error) == ("failed", 1, "refunds are down")
    settings.PAYMENT_PROVIDER = "sandbox"
    from io import StringIO

    out = StringIO()
    call_command("retry_refunds", stdout=out)
    assert "Refunds retried: 0" in out.getvalue()  # backing off: due one REFUND_RETRY_BASE later
    Checkout.objects.filter(booking=late).update(next_retry_at=Now())
    out = StringIO()
    call_command("retry_refunds", stdout=out)
    assert "refunded: 1" in out.getvalue()
    assert status_of(late) == Booking.Status.REFUNDED
    assert Checkout.objects.get(booking=late).refund_attempts == 2


@pytest.mark.parametrize("timestamp", ["²", "١٢٣", "9" * 5000, "-5", " 1"])
def test_signature_timestamp_must_be_ascii_digits_never_a_500(client, db, timestamp):
    """Regression: ``t=²`` passed str.isdigit() and crashed int() (a 500 for an unauthenticated caller)."""
    response = deliver(client, b"{}", f"t={timestamp},v1=abc")
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_signature"


@pytest.mark.parametrize("candidate", ["é", "ＡＢ", "0" * 63 + "é", "A" * 64, "0" * 65, ""])
def test_a_signature_that_is_not_a_sha256_in_hex_is_refused_never_a_500(client, db, candidate):
    """Regression: ``v1=é`` reached Stripe's hmac.compare_digest, which refuses non-ASCII str (a 500)."""
    response = deliver(client, b"{}", f"t={int(time.time())},v1={candidate}")
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_signature"


def test_a_future_dated_signature_is_refused_however_many_timestamps_follow_it(client, package):
    """Regression: we read the last ``t``, Stripe the first: a ``t`` of now appended to a signature made an
    hour ahead passed our check of the future, and Stripe, which refuses only stale ones, accepted it."""
    booking = book(package)
    payload = completed_event(booking.checkout.provider_checkout_id)
    future = sign(payload, timestamp=time.time() + 3600)
    now = int(time.time())
    for header in (future, f"{future},t={now}", f"t={now},{future}", f"{future}, t={now}"):
        response = deliver(client, payload, header)
        assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_signature", header
    assert not PaymentEvent.objects.exists() and status_of(booking) == Booking.Status.HELD


def test_non_ascii_digit_client_reference_is_an_unknown_checkout(client, db):
    """Regression: a signed event with client_reference_id "²" crashed int() after passing isdigit()."""
    response = deliver(client, completed_event("cs_nobody", reference="²"))
    assert response.status_code == 200 and response.json()["result"] == "unknown_checkout"


def test_expired_event_locks_the_booking_row_before_the_checkout_row(client, package):
    """Regression: booking -> checkout is the lock order of confirm_payment and cancel; the reverse could deadlock."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    booking = book(package)
    with CaptureQueriesContext(connection) as queries:
        assert deliver(client, expired_event(booking.checkout.provider_checkout_id)).json()["result"] == "released"
    # over HTTP each statement carries the request's history context first (core/history.py)
    sql = [
        q["sql"].split("; ", 1)[1] if "pghistory.context" in q["sql"] else q["sql"] for q in queries.captured_queries
    ]
    updates = [statement.split('"')[1] for statement in sql if statement.startswith("UPDATE")]
    assert updates.index("bookings_booking") < updates.index("bookings_checkout"), updates


def test_refund_left_pending_by_a_dead_process_is_retried_once_stale(client, package, settings):
    """Regression: a crash between committing ``pending`` and the provider's answer stranded the refund.

    ``retry_refunds`` only looked at ``failed``; now it also claims a ``pending`` refund
    older than REFUND_STALE_AFTER, and leaves a fresh (in-flight) one alone.
    """
    from io import StringIO

    from django.core.management import call_command

    from bookings.managers import REFUND_STALE_AFTER

    settings.PAYMENT_PROVIDER = "tests.bookings.providers.CrashingRefundProvider"
    booking = book(package)
    deliver(client, completed_event(booking.checkout.provider_checkout_id))
    with pytest.raises(RuntimeError):
        from bookings.services import cancel_booking

        cancel_booking(booking.pk)  # the process "dies" inside the provider call
    assert status_of(booking) == Booking.Status.REFUND_PENDING
    assert Checkout.objects.get(booking=booking).refund_state == "pending"
    settings.PAYMENT_PROVIDER = "sandbox"
    out = StringIO()
    call_command("retry_refunds", stdout=out)
    assert "Refunds retried: 0" in out.getvalue()  # in flight: not touched
    Checkout.objects.filter(booking=booking).update(updated_at=Now() - REFUND_STALE_AFTER - timedelta(seconds=1))
    out = StringIO()
    call_command("retry_refunds", stdout=out)
    assert "Refunds retried: 1, refunded: 1" in out.getvalue()
    assert status_of(booking) == Booking.Status.REFUNDED
    assert Checkout.objects.get(booking=booking).refund_state == "succeeded"


def test_cancel_and_the_refund_it_owes_commit_together(client, package, monkeypatch):
    """Regression: the cancel committed before the refund was recorded; a crash in between left a
    ``refund_pending`` booking with no refund owed on its checkout, invisible to ``retry_refunds``."""
    from bookings.managers import CheckoutManager
    from bookings.services import cancel_booking

    booking = book(package)
    deliver(client, completed_event(booking.checkout.provider_checkout_id))

    def crash(self, checkout_id):
        raise RuntimeError("process died")

    monkeypatch.setattr(CheckoutManager, "request_refund", crash)
    with pytest.raises(RuntimeError):
        cancel_booking(booking.pk)
    assert status_of(booking) == Booking.Status.CONFIRMED  # all or nothing
    assert Checkout.objects.get(booking=booking).refund_state == ""


def test_a_signed_event_carrying_u0000_is_stored_without_it_and_processed(client, package, recording_provider):
    """Regression: jsonb cannot hold U+0000, so such an event was answered 400 on every delivery and never
    processed. The signature is checked on the raw body; the stored copy has U+FFFD in its place."""
    booking = book(package)
    data = json.loads(completed_event(booking.checkout.provider_checkout_id, event_id="evt_nul"))
    data["data"]["object"]["customer_details"] = {"name": "Ann\u0000Lee", "extra\u0000key": ["x\u0000"]}
    response = deliver(client, json.dumps(data).encode())
    assert response.status_code == 200, response.content
    assert response.json()["result"] == "confirmed"
    assert status_of(booking) == Booking.Status.CONFIRMED
    stored = PaymentEvent.objects.get(event_id="evt_nul")
    assert stored.payload["data"]["object"]["customer_details"] == {
        "name": "Ann\ufffdLee",
        "extra\ufffdkey": ["x\ufffd"],
    }
    assert stored.processed_at is not None


def _with_lone_surrogate(where, checkout_id):
    """A signed event whose ``where`` carries "\\ud800" (no UTF-8 has it: PostgreSQL's text cannot take it)."""
    session = {
        "id": checkout_id, "object": "checkout.session", "payment_status": "paid",
        "amount_total": 10000, "currency": "usd", "payment_intent": "pi_1",
    }  # fmt: skip
    dispute = {"id": "dp_1", "object": "dispute", "amount": 100, "currency": "usd", "payment_intent": "pi_\ud800"}
    refund = {
        "id": "re_\ud800", "object": "refund", "amount": 10000, "currency": "usd",
        "status": "succeeded", "payment_intent": "pi_1",
    }  # fmt: skip
    event_id = f"evt_{time.monotonic_ns()}"
    return {
        "event id": {"id": "evt_\ud800", "type": "checkout.session.completed", "data": {"object": session}},
        "session id": {
            "id": event_id,
            "type": "checkout.session.completed",
            "data": {"object": {**session, "id": "cs_\ud800"}},
        },
        "payment id": {"id": event_id, "type": "charge.dispute.created", "data": {"object": dispute}},
        "refund id": {"id": event_id, "type": "refund.updated", "data": {"object": refund}},
        "reference": {
            "id": event_id,
            "type": "checkout.session.completed",
            "data": {"object": {**session, "client_reference_id": "\ud800\x00"}},
        },
    }[where]


@pytest.mark.parametrize("where", ["event id", "session id", "payment id", "refund id", "reference"])
def test_a_signed_event_naming_what_no_text_column_takes_is_answered_never_a_500(db, client, where):
    """Stripe retries a 5xx for days: a lone surrogate (or a NUL) where an id goes is malformed, or not a match."""
    booking = book(PackageFactory())
    payload = json.dumps(_with_lone_surrogate(where, booking.checkout.provider_checkout_id)).encode()
    response = deliver(client, payload)
    assert response.status_code in (200, 400), (where, response.status_code, response.content)
    if where in ("event id", "session id", "refund id"):
        assert response.json()["error"]["code"] == "malformed_event"
    # an unusable optional field is no field: the session's id still names the booking, which is paid
    assert Booking.objects.get(pk=booking.pk).status == ("confirmed" if where == "reference" else "held")
