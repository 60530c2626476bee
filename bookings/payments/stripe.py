"""Stripe Checkout, used when STRIPE_API_KEY is set. Thin on purpose: the mapping is what tests check."""

from datetime import timedelta

from django.conf import settings

from bookings.payments.base import (
    PaymentProvider,
    ProviderCheckout,
    ProviderError,
    ProviderRefund,
    looked_up_event,
    looked_up_type,
    refund_outcome,
)
from core.money import to_minor_units

# Stripe refuses a Checkout Session expiring sooner than this after it creates it.
STRIPE_MIN_EXPIRY = timedelta(minutes=30)
# Room for the request's own way to Stripe and the two clocks' skew.
STRIPE_EXPIRY_MARGIN = timedelta(minutes=2)
# How long a checkout session lives past its hold (checkout_expiry).
SESSION_OUTLIVES_HOLD = STRIPE_MIN_EXPIRY + STRIPE_EXPIRY_MARGIN


def checkout_expiry(booking):
    """When the session expires: Stripe's minimum after the hold's own expiry, the last moment the session
    can still be asked for (a checkout opens only while its hold is live: right after the hold, or when a
    retry resumes a request that died before asking, up to that moment). The same on every call, as Stripe's
    idempotency key requires: a margin counted from the hold's creation was spent by a resume, which only
    comes once the dead request's key is IDEMPOTENCY_IN_PROGRESS_TIMEOUT old, and Stripe refused it."""
    return booking.hold_expires_at + SESSION_OUTLIVES_HOLD


def checkout_params(booking, checkout):
    """The Checkout Session parameters for a held booking."""
    base = settings.PUBLIC_BASE_URL.rstrip("/")
    expires_at = checkout_expiry(booking)
    return {
        "mode": "payment",
        "client_reference_id": str(checkout.pk),
        "customer_email": booking.customer_email,
        "expires_at": int(expires_at.timestamp()),
        "line_items": [
            {
                "quantity": 1,
                "price_data": {
                    "currency": booking.currency.lower(),
                    "unit_amount": to_minor_units(booking.amount, booking.currency),
                    "product_data": {"name": f"{booking.package.name} - {booking.date.isoformat()}"},
                },
            }
        ],
        "metadata": {"booking_id": str(booking.pk), "checkout_id": str(checkout.pk)},
        "success_url": f"{base}/?booking={booking.pk}&paid=1",
        "cancel_url": f"{base}/?booking={booking.pk}&cancelled=1",
    }


def as_refund(refund):
    """A Stripe Refund as far as it has gone: ``succeeded``, ``pending`` (also ``requires_action``) or ``failed``."""
    return ProviderRefund(
        id=refund.id, status=refund_outcome(refund.status), failure_reason=getattr(refund, "failure_reason", None) or ""
    )


class StripeProvider(PaymentProvider):
    name = "stripe"

    def __init__(self):
        import stripe

        # Each try bounded (the library's default is 80 s, up to 3 tries): settings.PAYMENT_PROVIDER_TIMEOUT_SECONDS.
        timeout = stripe.RequestsClient(timeout=settings.PAYMENT_PROVIDER_TIMEOUT_SECONDS)
        self.client = stripe.StripeClient(settings.STRIPE_API_KEY, http_client=timeout, max_network_retries=2)
        self.stripe = stripe

    def create_checkout(self, booking, checkout) -> ProviderCheckout:
        try:
            session = self.client.v1.checkout.sessions.create(
                params=checkout_params(booking, checkout),
                options={"idempotency_key": f"lockstep-checkout-{checkout.pk}"},
            )
        except self.stripe.StripeError as exc:
            raise ProviderError(
                str(exc), answered=exc.http_status is not None, in_progress=exc.http_status == 409
            ) from exc
        return ProviderCheckout(id=session.id, url=session.url or "")

    def refund(self, checkout, *, idempotency_key) -> ProviderRefund:
        if not checkout.provider_payment_id:
            raise ProviderError("no payment intent recorded for this checkout")
        try:
            refund = self.client.v1.refunds.create(
                params={"payment_intent": checkout.provider_payment_id},
                options={"idempotency_key": idempotency_key},
            )
        except self.stripe.StripeError as exc:  # no HTTP status: not answered (APIConnectionError)
            raise ProviderError(str(exc), answered=exc.http_status is not None) from exc
        return as_refund(refund)

    def find_refund(self, checkout) -> ProviderRefund | None:
        """The full refund of the checkout's PaymentIntent that Stripe made or is making (not a failed or canceled
        one). A refund of part of it (a goodwill refund from the dashboard) is not the refund owed: taking it
        would mark the booking refunded with the rest never paid back."""
        if not checkout.provider_payment_id:
            return None
        try:
            refunds = self.client.v1.refunds.list(params={"payment_intent": checkout.provider_payment_id, "limit": 10})
        except self.stripe.StripeError as exc:
            raise ProviderError(str(exc)) from exc
        charged, currency = to_minor_units(checkout.amount, checkout.currency), checkout.currency.lower()
        full = [
            refund
            for refund in refunds.data
            if getattr(refund, "amount", None) == charged and getattr(refund, "currency", None) == currency
        ]
        made = [refund for refund in map(as_refund, full) if refund.status != "failed"]
        return made[0] if made else None

    def get_refund(self, checkout) -> ProviderRefund:
        try:
            return as_refund(self.client.v1.refunds.retrieve(checkout.provider_refund_id))
        except self.stripe.StripeError as exc:
            raise ProviderError(str(exc)) from exc

    def checkout_outcome(self, checkout):
        try:  # with its PaymentIntent, whose status tells a delayed payment that failed
            session = self.client.v1.checkout.sessions.retrieve(
                checkout.provider_checkout_id, params={"expand": ["payment_intent"]}
            )
        except self.stripe.StripeError as exc:
            raise ProviderError(str(exc), answered=exc.http_status is not None) from exc
        data = session.to_dict(for_json=True)
        intent = data.get("payment_intent")
        if isinstance(intent, dict):  # expanded: the event names it by id, as a delivered one does
            data["payment_intent"] = intent.get("id")
        event_type = looked_up_type(
            data,
            intent_status=intent.get("status") if isinstance(intent, dict) else None,
            processing=getattr(checkout, "state", None) == "processing",
        )
        return None if event_type is None else looked_up_event(data, event_type)

    def expire_checkout(self, checkout) -> None:
        """Expire the open Checkout Session (Stripe then sends checkout.session.expired)."""
        try:
            self.client.v1.checkout.sessions.expire(checkout.provider_checkout_id)
        except self.stripe.StripeError as exc:
            raise ProviderError(str(exc)) from exc
