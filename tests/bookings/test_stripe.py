"""The Stripe provider's mapping, checked against recorded Stripe payloads (no network here)."""

import json
import os
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace

import pytest

from bookings.exceptions import InvalidSignature
from bookings.payments import get_provider
from bookings.payments.base import parse_event, sign, verify_signature
from bookings.payments.stripe import STRIPE_MIN_EXPIRY, checkout_params
from bookings.services import hold_in_transaction
from tests.bookings.factories import PackageFactory, future

# Trimmed from a real `checkout.session.completed` delivery (Stripe API 2024-06-20).
RECORDED_COMPLETED = {
    "id": "evt_1PkXq2LkdIwHu7ix3k0xY9Zs",
    "object": "event",
    "api_version": "2024-06-20",
    "created": 1723111111,
    "data": {
        "object": {
            "id": "cs_test_a1B2c3D4e5F6g7H8i9J0",
            "object": "checkout.session",
            "amount_total": 45000,
            "client_reference_id": "17",
            "currency": "usd",
            "customer_details": {"email": "ann@example.com", "name": "Ann"},
            "metadata": {"booking_id": "42", "checkout_id": "17"},
            "mode": "payment",
            "payment_intent": "pi_3PkXq1LkdIwHu7ix0abcdEFG",
            "payment_status": "paid",
            "status": "complete",
        }
    },
    "livemode": False,
    "pending_webhooks": 1,
    "request": {"id": None, "idempotency_key": None},
    "type": "checkout.session.completed",
}
RECORDED_EXPIRED = {
    "id": "evt_1PkYz9LkdIwHu7ixQwErTyUi",
    "object": "event",
    "data": {
        "object": {
            "id": "cs_test_expired000",
            "object": "checkout.session",
            "client_reference_id": "18",
            "payment_intent": None,
            "payment_status": "unpaid",
            "status": "expired",
        }
    },
    "type": "checkout.session.expired",
}


def test_recorded_completed_event_maps():
    event = parse_event(json.dumps(RECORDED_COMPLETED).encode())
    assert (event.id, event.type, event.checkout_id, event.payment_id, event.client_reference_id) == (
        "evt_1PkXq2LkdIwHu7ix3k0xY9Zs",
        "checkout.session.completed",
        "cs_test_a1B2c3D4e5F6g7H8i9J0",
        "pi_3PkXq1LkdIwHu7ix0abcdEFG",
        "17",
    )


def test_recorded_expired_event_maps():
    event = parse_event(json.dumps(RECORDED_EXPIRED).encode())
    assert (event.type, event.checkout_id, event.payment_id) == ("checkout.session.expired", "cs_test_expired000", "")


def test_our_signature_matches_the_stripe_library_verifier():
    import stripe

    payload = json.dumps(RECORDED_COMPLETED).encode()
    header = sign(payload, secret="whsec_test")
    assert stripe.WebhookSignature.verify_header(payload.decode(), header, "whsec_test", tolerance=300)
    verify_signature(payload, header, secret="whsec_test")
    with pytest.raises(InvalidSignature):
        verify_signature(payload + b" ", header, secret="whsec_test")


def test_a_header_made_by_the_stripe_library_is_accepted_and_verified_by_it(monkeypatch):
    """verify_signature delegates to stripe.WebhookSignature.verify_header (the provider's own verifier)."""
    import stripe

    payload = json.dumps(RECORDED_COMPLETED).encode()
    header = stripe.WebhookSignature.generate_signature_header(payload.decode(), "whsec_test")
    verify_signature(payload, header, secret="whsec_test")
    calls = []
    real = stripe.WebhookSignature.verify_header

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(stripe.WebhookSignature, "verify_header", spy)
    verify_signature(payload, header, secret="whsec_test")
    assert calls == [(payload.decode(), header, "whsec_test")]


def test_a_future_timestamp_beyond_the_tolerance_is_refused_though_stripe_would_accept_it():
    import time

    import stripe

    payload = json.dumps(RECORDED_COMPLETED).encode()
    header = stripe.WebhookSignature.generate_signature_header(
        payload.decode(), "whsec_test", timestamp=int(time.time()) + 301
    )
    assert stripe.WebhookSignature.verify_header(payload.decode(), header, "whsec_test", tolerance=300)
    with pytest.raises(InvalidSignature):
        verify_signature(payload, header, secret="whsec_test")


def test_checkout_params_for_a_booking():
    created = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
    booking = SimpleNamespace(
        pk=42,
        customer_email="ann@example.com",
        currency="USD",
        amount=Decimal("450.00"),
        date=date(2026, 12, 24),
        package=SimpleNamespace(name="Cruise"),
        created_at=created,
        hold_expires_at=created + timedelta(minutes=15),
    )
    params = checkout_params(booking, SimpleNamespace(pk=17))
    assert params["client_reference_id"] == "17"
    assert params["line_items"][0]["price_data"] == {
        "currency": "usd",
        "unit_amount": 45000,
        "product_data": {"name": "Cruise - 2026-12-24"},
    }
    # Stripe's minimum counts from its own session's creation, which may come as late as the hold's expiry
    # (a resume): the minimum and a margin after that, the same on every call under the same idempotency key
    assert params["expires_at"] == int((created + timedelta(minutes=15 + 30 + 2)).timestamp())
    assert params["metadata"] == {"booking_id": "42", "checkout_id": "17"}


@pytest.mark.parametrize(
    "currency,amount,unit_amount",
    [("USD", "19.99", 1999), ("JPY", "1500", 1500), ("KWD", "12.250", 12250), ("BHD", "1.5", 1500)],
)
def test_checkout_params_send_minor_units_from_the_currency_exponent(currency, amount, unit_amount):
    created = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
    booking = SimpleNamespace(
        pk=1,
        customer_email="a@example.com",
        currency=currency,
        amount=Decimal(amount),
        date=date(2026, 12, 24),
        package=SimpleNamespace(name="P"),
        created_at=created,
        hold_expires_at=created,
    )
    price_data = checkout_params(booking, SimpleNamespace(pk=1))["line_items"][0]["price_data"]
    assert (price_data["currency"], price_data["unit_amount"]) == (currency.lower(), unit_amount)


@pytest.mark.django_db
def test_a_checkout_resumed_at_the_last_moment_of_its_hold_still_leaves_stripe_its_minimum(settings, tenant):
    """Regression: the expiry was the hold's creation + 35 minutes. A resume (a retry of a request that died
    after its hold committed) takes the key over only once it is IDEMPOTENCY_IN_PROGRESS_TIMEOUT (5 minutes)
    old: Stripe was asked for a session expiring under 30 minutes later, refused it, and the hold was given up.
    Asked at any moment its hold is live, Stripe gets a session at least its minimum away."""
    package = PackageFactory(tenant=tenant)
    booking = hold_in_transaction(
        tenant=tenant, package_id=package.pk, date=future(3), customer_name="Ann", customer_email="ann@example.com"
    )
    latest_call = booking.hold_expires_at  # after it, the checkout never opens (Checkout.objects.opening)
    assert latest_call - booking.created_at >= settings.IDEMPOTENCY_IN_PROGRESS_TIMEOUT  # a resume can come
    expires_at = datetime.fromtimestamp(checkout_params(booking, booking.checkout)["expires_at"], tz=UTC)
    assert expires_at - latest_call >= STRIPE_MIN_EXPIRY


def test_recorded_event_carries_what_the_match_needs():
    event = parse_event(json.dumps(RECORDED_COMPLETED).encode())
    assert (event.payment_status, event.amount_total, event.currency, event.metadata_booking_id) == (
        "paid",
        45000,
        "usd",
        "42",
    )


def test_provider_choice(settings):
    settings.PAYMENT_PROVIDER, settings.STRIPE_API_KEY = "", ""
    assert get_provider().name == "sandbox"
    settings.STRIPE_API_KEY = "sk_test_123"
    assert get_provider().name == "stripe"
    settings.PAYMENT_PROVIDER = "sandbox"
    assert get_provider().name == "sandbox"


@pytest.mark.parametrize("minutes,starts", [("1380", True), ("1381", False), ("0", False)])
def test_a_hold_longer_than_stripe_lets_its_session_last_is_a_configuration_error(minutes, starts):
    """A session lasts the hold and 32 minutes more; Stripe refuses one lasting over 24 hours: every checkout of
    a longer hold would fail, so the server does not start with one."""
    env = {**os.environ, "BOOKING_HOLD_TTL_MINUTES": minutes, "DJANGO_SETTINGS_MODULE": "config.settings"}
    started = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"], env=env, capture_output=True, text=True, timeout=60
    )
    assert (started.returncode == 0) == starts, started.stderr[-500:]
    if not starts:
        assert f"BOOKING_HOLD_TTL_MINUTES={minutes}: expected 1 to 1380" in started.stderr


def test_each_try_of_a_stripe_call_is_bounded_by_the_providers_timeout(settings):
    """The library's own default is 80 s a try, 3 tries: a request could still be waiting for Stripe when its
    Idempotency-Key's claim went stale and a retry took it over (tests/bookings/test_two_phase_resume.py)."""
    settings.STRIPE_API_KEY, settings.PAYMENT_PROVIDER_TIMEOUT_SECONDS = "sk_test_x", 7
    requestor = get_provider("stripe").client._requestor
    assert requestor._client._timeout == 7 and requestor._options.max_network_retries == 2


@pytest.mark.parametrize("seconds,claim,starts", [("20", "300", True), ("50", "300", False), ("0", "300", False)])
def test_provider_calls_that_could_outlast_an_idempotency_claim_are_a_configuration_error(seconds, claim, starts):
    env = {
        **os.environ,
        "PAYMENT_PROVIDER_TIMEOUT_SECONDS": seconds,
        "IDEMPOTENCY_IN_PROGRESS_TIMEOUT": claim,
        "DJANGO_SETTINGS_MODULE": "config.settings",
    }
    started = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"], env=env, capture_output=True, text=True, timeout=60
    )
    assert (started.returncode == 0) == starts, started.stderr[-500:]
    if not starts:
        assert f"PAYMENT_PROVIDER_TIMEOUT_SECONDS={seconds}: expected at least 1" in started.stderr


@pytest.mark.parametrize(
    "recorded, expected",
    [(RECORDED_COMPLETED, "checkout.session.completed"), (RECORDED_EXPIRED, "checkout.session.expired"), (None, None)],
)
def test_a_looked_up_session_maps_to_the_event_its_webhook_would_have_sent(settings, recorded, expected):
    """``checkout_outcome``: a session Stripe calls complete or expired is read as its event would be (under the
    look-up's own id); an open one is None (its events will come)."""
    import stripe

    settings.STRIPE_API_KEY = "sk_test_x"
    provider = get_provider("stripe")
    data = (
        recorded["data"]["object"]
        if recorded
        else {"id": "cs_test_open", "object": "checkout.session", "status": "open"}
    )
    session = stripe.StripeObject.construct_from(data, "sk_test_x")
    asked = []

    def retrieve(session_id, *args, **kwargs):
        asked.append(session_id)
        return session

    provider.client.v1.checkout.sessions.retrieve = retrieve
    checkout = SimpleNamespace(provider_checkout_id=data["id"])
    event = provider.checkout_outcome(checkout)
    assert asked == [data["id"]]
    if expected is None:
        assert event is None
        return
    assert (event.id, event.type, event.checkout_id) == (f"lookup_{data['id']}_{expected}", expected, data["id"])
    assert (event.payment_id, event.client_reference_id) == (data["payment_intent"] or "", data["client_reference_id"])
    if expected == "checkout.session.completed":
        assert (event.payment_status, event.amount_total, event.currency) == ("paid", 45000, "usd")


def delayed_session(payment_status, intent_status):
    """RECORDED_COMPLETED's session paid by a delayed method, retrieved with its PaymentIntent expanded."""
    session = dict(RECORDED_COMPLETED["data"]["object"], payment_status=payment_status)
    session["payment_intent"] = {
        "id": "pi_3PkXq1LkdIwHu7ix0abcdEFG",
        "object": "payment_intent",
        "status": intent_status,
    }
    return session


@pytest.mark.parametrize(
    "payment_status, intent_status, state, expected",
    [
        ("paid", "succeeded", "processing", "checkout.session.async_payment_succeeded"),
        ("unpaid", "requires_payment_method", "processing", "checkout.session.async_payment_failed"),
        ("unpaid", "canceled", "processing", "checkout.session.async_payment_failed"),
        ("unpaid", "processing", "processing", None),  # still settling: its own event may come yet
        ("unpaid", "processing", "open", "checkout.session.completed"),  # its completed/unpaid was lost too
        ("unpaid", "requires_payment_method", "open", "checkout.session.async_payment_failed"),
    ],
)
def test_a_looked_up_delayed_payment_maps_to_the_event_that_settles_it(
    settings, payment_status, intent_status, state, expected
):
    """A checkout waiting for a delayed payment (``processing``) is settled only by that payment's outcome: the
    session paid since, or its PaymentIntent failed (asked for with the session, ``expand``)."""
    import stripe

    settings.STRIPE_API_KEY = "sk_test_x"
    provider = get_provider("stripe")
    data = delayed_session(payment_status, intent_status)
    asked = []

    def retrieve(session_id, *args, params=None, **kwargs):
        asked.append(params)
        return stripe.StripeObject.construct_from(data, "sk_test_x")

    provider.client.v1.checkout.sessions.retrieve = retrieve
    event = provider.checkout_outcome(SimpleNamespace(provider_checkout_id=data["id"], state=state))
    assert asked == [{"expand": ["payment_intent"]}]
    if expected is None:
        assert event is None
        return
    assert (event.id, event.type) == (f"lookup_{data['id']}_{expected}", expected)
    assert event.payment_id == "pi_3PkXq1LkdIwHu7ix0abcdEFG"  # the id, as a delivered event names it
