"""The local sandbox provider: a checkout page on this server that sends signed webhooks."""

import json
import secrets

from django.conf import settings
from django.urls import reverse

from bookings.payments.base import PaymentProvider, ProviderCheckout, sign


class SandboxProvider(PaymentProvider):
    name = "sandbox"

    def create_checkout(self, booking, checkout) -> ProviderCheckout:
        checkout_id = f"cs_sandbox_{secrets.token_hex(12)}"
        path = reverse("bookings:sandbox-checkout", args=[checkout_id])
        return ProviderCheckout(id=checkout_id, url=settings.PUBLIC_BASE_URL.rstrip("/") + path)

    def refund(self, checkout) -> str:
        return f"re_sandbox_{secrets.token_hex(12)}"


def build_event(checkout, event_type):
    """A Stripe-shaped event for the sandbox page to deliver, as (payload bytes, Stripe-Signature)."""
    completed = event_type == "checkout.session.completed"
    event = {
        "id": f"evt_sandbox_{secrets.token_hex(12)}",
        "object": "event",
        "type": event_type,
        "data": {
            "object": {
                "id": checkout.provider_checkout_id,
                "object": "checkout.session",
                "client_reference_id": str(checkout.pk),
                "payment_intent": f"pi_sandbox_{checkout.pk}" if completed else None,
                "payment_status": "paid" if completed else "unpaid",
                "status": "complete" if completed else "expired",
                "amount_total": int(checkout.amount * 100),
                "currency": checkout.currency.lower(),
                "metadata": {"booking_id": str(checkout.booking_id)},
            }
        },
    }
    payload = json.dumps(event).encode()
    return payload, sign(payload)
