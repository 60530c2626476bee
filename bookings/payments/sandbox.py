"""The local sandbox provider: a checkout page on this server that sends signed webhooks.

It behaves like Stripe where the webhook can tell: events carry the same fields
(``payment_status``, ``amount_total`` in minor units, ``currency``, the session id,
``client_reference_id``, ``metadata.booking_id``), are signed by the stripe library,
refunds are idempotent per key and can be looked up (``find_refund``), and an expired
session sends ``checkout.session.expired``. What it "remembers" (refunds, expired
sessions) lives in this process, like a test-mode account that is wiped on restart.
"""

import hashlib
import json
import re
import secrets
import threading
import time

from django.conf import settings
from django.urls import reverse

from bookings.payments.base import (
    ASYNC_FAILED,
    ASYNC_SUCCEEDED,
    COMPLETED,
    EXPIRED,
    PaymentProvider,
    ProviderCheckout,
    ProviderError,
    ProviderRefund,
    looked_up_event,
    looked_up_type,
    sign,
)
from core.money import to_minor_units

# What a sandbox checkout id looks like (``create_checkout``): the sandbox page refuses anything else unread.
CHECKOUT_ID = re.compile(r"cs_sandbox_[0-9a-f]{1,64}")


class SandboxProvider(PaymentProvider):
    name = "sandbox"
    # The sandbox "account": every refund made by id (as it stands now), the refund standing against each
    # payment (not a failed one), and the first answer given per idempotency key (Stripe replays it as given).
    _made = {}
    _refunds = {}
    _by_key = {}
    _sessions = {}  # session id -> (event type, payment_status): how it ended, as the customer left it
    _lock = threading.Lock()
    # What a new refund's status is (Stripe: ``succeeded`` for most cards, ``pending`` for some methods).
    refund_status = "succeeded"

    def create_checkout(self, booking, checkout) -> ProviderCheckout:
        to_minor_units(booking.amount, booking.currency)  # what Stripe would refuse, the sandbox refuses
        checkout_id = f"cs_sandbox_{secrets.token_hex(12)}"
        path = reverse("bookings:sandbox-checkout", args=[checkout_id])
        return ProviderCheckout(id=checkout_id, url=settings.PUBLIC_BASE_URL.rstrip("/") + path)

    @staticmethod
    def _payment(checkout):
        # The session id is random, so one process serving several databases (the test suite) never
        # mixes two checkouts that happen to share a primary key or a payment id.
        return (checkout.provider_checkout_id or f"checkout-{checkout.pk}", checkout.provider_payment_id)

    def refund(self, checkout, *, idempotency_key) -> ProviderRefund:
        payment = self._payment(checkout)
        with self._lock:
            if (payment, idempotency_key) in self._by_key:  # Stripe replays the first answer for the same key,
                answer = self._by_key[payment, idempotency_key]  # an error it answered too
                if isinstance(answer, ProviderError):
                    raise answer
                return answer
            try:
                self.refuse_refund(checkout)
            except ProviderError as refused:
                if refused.answered:
                    self._by_key[payment, idempotency_key] = refused
                raise
            digest = hashlib.sha256(f"{idempotency_key}:{secrets.token_hex(8)}".encode()).hexdigest()[:24]
            made = ProviderRefund(id=f"re_sandbox_{digest}", status=self.refund_status)
            self._made[made.id] = made
            if made.status != "failed":
                self._refunds[payment] = made.id
            self._by_key[payment, idempotency_key] = made
            return made

    def refuse_refund(self, checkout):
        """Raise the ProviderError the provider would answer a refund of ``checkout`` with, if any (under the lock)."""
        payment = self._payment(checkout)
        if payment in self._refunds:  # Stripe: charge_already_refunded
            raise ProviderError(f"payment {payment[1] or payment[0]} was already refunded", answered=True)

    def find_refund(self, checkout) -> ProviderRefund | None:
        with self._lock:
            refund_id = self._refunds.get(self._payment(checkout))
            return self._made[refund_id] if refund_id else None

    def get_refund(self, checkout) -> ProviderRefund:
        with self._lock:
            if checkout.provider_refund_id not in self._made:
                raise ProviderError(f"no such refund: {checkout.provider_refund_id}")
            return self._made[checkout.provider_refund_id]

    @classmethod
    def settle_refund(cls, refund_id, status, failure_reason=""):
        """The provider moves a refund on (``succeeded`` or ``failed``); a failed one no longer stands against its
        payment, so a new refund may be made. Returns the refund as it now stands."""
        with cls._lock:
            cls._made[refund_id] = settled = ProviderRefund(refund_id, status, failure_reason)
            if status == "failed":
                # in place: the "account" is SandboxProvider's, whichever subclass is asked
                for payment in [payment for payment, made in cls._refunds.items() if made == refund_id]:
                    del cls._refunds[payment]
            return settled

    @classmethod
    def session_ended(cls, checkout, event_type, payment_status=None):
        """The customer ended the session on the sandbox page (paid, or left it to expire), or its delayed
        payment settled (``ASYNC_SUCCEEDED``, ``ASYNC_FAILED``): the account remembers it, whether or not its
        event reaches the webhook (``payment_status`` as ``build_event``)."""
        with cls._lock:
            cls._sessions[checkout.provider_checkout_id] = (event_type, payment_status)

    def checkout_outcome(self, checkout):
        from bookings.payments.stripe import checkout_expiry
        from core.guards import database_clock

        with self._lock:
            ended = self._sessions.get(checkout.provider_checkout_id)
        if ended is None and database_clock() > checkout_expiry(checkout.booking):
            ended = (EXPIRED, "unpaid")  # never paid: it expired, as a Stripe session does
        if ended is None:
            return None
        payload, _signature = build_event(checkout, ended[0], payment_status=ended[1])
        session = json.loads(payload)["data"]["object"]
        intent = "requires_payment_method" if ended[0] == ASYNC_FAILED else None  # as Stripe's, once it failed
        event_type = looked_up_type(session, intent_status=intent, processing=checkout.state == "processing")
        return None if event_type is None else looked_up_event(session, event_type)

    def expire_checkout(self, checkout) -> None:
        """Expire the session like Stripe: an open session sends ``checkout.session.expired``."""
        if not checkout.provider_checkout_id:
            raise ProviderError("no session to expire")
        from bookings.services import sandbox_deliver

        sandbox_deliver(checkout, EXPIRED)


def build_event(checkout, event_type, *, payment_status=None):
    """A Stripe-shaped event for the sandbox page to deliver, as (payload bytes, Stripe-Signature).

    ``payment_status`` defaults to what Stripe sends for the type: ``paid`` for a completed
    card payment and an async success, ``unpaid`` otherwise (pass ``unpaid`` with
    ``checkout.session.completed`` for a delayed method: "pay later").
    """
    if payment_status is None:
        payment_status = "paid" if event_type in (COMPLETED, ASYNC_SUCCEEDED) else "unpaid"
    settles = event_type in (COMPLETED, ASYNC_SUCCEEDED, ASYNC_FAILED)
    event = {
        "id": f"evt_sandbox_{secrets.token_hex(12)}",
        "object": "event",
        "type": event_type,
        "data": {
            "object": {
                "id": checkout.provider_checkout_id,
                "object": "checkout.session",
                "client_reference_id": str(checkout.pk),
                "payment_intent": f"pi_sandbox_{checkout.pk}" if settles else None,
                "payment_status": payment_status,
                "status": "expired" if event_type == EXPIRED else "complete",
                "amount_total": to_minor_units(checkout.amount, checkout.currency),
                "currency": checkout.currency.lower(),
                "metadata": {"booking_id": str(checkout.booking_id), "checkout_id": str(checkout.pk)},
            }
        },
    }
    payload = json.dumps(event).encode()
    return payload, sign(payload)


REFUND_UPDATED = "refund.updated"
REFUND_FAILED = "refund.failed"


def build_refund_event(checkout, *, status, failure_reason=None, refund_id=None, event_type=None):
    """A Stripe-shaped ``refund.updated`` (or, for ``failed``, ``refund.failed``) event for the checkout's refund.

    ``refund_id`` defaults to the refund recorded on the checkout, ``event_type`` to the type for the
    status (or ``refund.created``, ``charge.refund.updated``); returns (payload bytes, Stripe-Signature).
    """
    event = {
        "id": f"evt_sandbox_{secrets.token_hex(12)}",
        "object": "event",
        "type": event_type or (REFUND_FAILED if status == "failed" else REFUND_UPDATED),
        "data": {
            "object": {
                "id": refund_id or checkout.provider_refund_id,
                "object": "refund",
                "payment_intent": checkout.provider_payment_id or None,
                "status": status,
                "failure_reason": failure_reason,
                "amount": to_minor_units(checkout.amount, checkout.currency),
                "currency": checkout.currency.lower(),
                "metadata": {},
            }
        },
    }
    payload = json.dumps(event).encode()
    return payload, sign(payload)


def build_dispute_event(
    checkout, event_type, *, status="needs_response", amount=None, reason="fraudulent", dispute_id="dp_sandbox_1"
):
    """A Stripe-shaped ``charge.dispute.*`` event for the checkout's payment, evidence due in a week.

    ``amount`` defaults to the whole charge (minor units); returns (payload bytes, Stripe-Signature).
    """
    event = {
        "id": f"evt_sandbox_{secrets.token_hex(12)}",
        "object": "event",
        "type": event_type,
        "data": {
            "object": {
                "id": dispute_id,
                "object": "dispute",
                "charge": f"ch_sandbox_{checkout.pk}",
                "payment_intent": checkout.provider_payment_id or None,
                "status": status,
                "reason": reason,
                "amount": to_minor_units(checkout.amount, checkout.currency) if amount is None else amount,
                "currency": checkout.currency.lower(),
                "evidence_details": {"due_by": int(time.time()) + 7 * 86400},
            }
        },
    }
    payload = json.dumps(event).encode()
    return payload, sign(payload)
