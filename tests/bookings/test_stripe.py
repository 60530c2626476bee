"""The Stripe provider's mapping, checked against recorded Stripe payloads (no network here)."""

import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace

import pytest

from bookings.exceptions import InvalidSignature
from bookings.payments import get_provider
from bookings.payments.base import parse_event, sign, verify_signature
from bookings.payments.stripe import checkout_params, minor_units

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
    "data": {"object": {"id": "cs_test_expired000", "object": "checkout.session", "client_reference_id": "18",
                        "payment_intent": None, "payment_status": "unpaid", "status": "expired"}},
    "type": "checkout.session.expired",
}


def test_recorded_completed_event_maps():
    event = parse_event(json.dumps(RECORDED_COMPLETED).encode())
    assert (event.id, event.type, event.checkout_id, event.payment_id, event.client_reference_id) == (
        "evt_1PkXq2LkdIwHu7ix3k0xY9Zs", "checkout.session.completed", "cs_test_a1B2c3D4e5F6g7H8i9J0",
        "pi_3PkXq1LkdIwHu7ix0abcdEFG", "17")


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


def test_checkout_params_for_a_booking():
    created = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
    booking = SimpleNamespace(
        pk=42, customer_email="ann@example.com", currency="USD", amount=Decimal("450.00"), date=date(2026, 12, 24),
        package=SimpleNamespace(name="Cruise"), created_at=created, hold_expires_at=created + timedelta(minutes=15),
    )
    params = checkout_params(booking, SimpleNamespace(pk=17))
    assert params["client_reference_id"] == "17"
    assert params["line_items"][0]["price_data"] == {
        "currency": "usd", "unit_amount": 45000, "product_data": {"name": "Cruise - 2026-12-24"}}
    assert params["expires_at"] == int((created + timedelta(minutes=30)).timestamp())  # Stripe's minimum
    assert params["metadata"] == {"booking_id": "42", "checkout_id": "17"}


def test_minor_units():
    assert minor_units(Decimal("19.99"), "USD") == 1999
    assert minor_units(Decimal("1500"), "JPY") == 1500


def test_provider_choice(settings):
    settings.PAYMENT_PROVIDER, settings.STRIPE_API_KEY = "", ""
    assert get_provider().name == "sandbox"
    settings.STRIPE_API_KEY = "sk_test_123"
    assert get_provider().name == "stripe"
    settings.PAYMENT_PROVIDER = "sandbox"
    assert get_provider().name == "sandbox"
