"""The provider interface, and the Stripe webhook scheme every provider here speaks.

Signatures are made and checked by the ``stripe`` library itself
(``stripe.WebhookSignature``), for Stripe's events and the sandbox's alike.
"""

import json
import re
import time
from dataclasses import dataclass, field
from datetime import timedelta

import stripe
from django.conf import settings

from bookings.exceptions import InvalidSignature, MalformedEvent

SIGNATURE_TOLERANCE_SECONDS = 300

# The Checkout Session events (Stripe's names, which the sandbox sends too).
COMPLETED = "checkout.session.completed"
EXPIRED = "checkout.session.expired"
ASYNC_SUCCEEDED = "checkout.session.async_payment_succeeded"
ASYNC_FAILED = "checkout.session.async_payment_failed"
# payment_status values that mean the money is there (Stripe: a card payment, or a 100 % discount).
PAID = ("paid", "no_payment_required")
# A delayed payment's PaymentIntent after it failed: back to asking for a method, or cancelled.
DELAYED_PAYMENT_FAILED = ("requires_payment_method", "canceled")


class ProviderError(Exception):
    """The provider refused or could not be reached; nothing was created or refunded.

    ``answered``: the provider answered the request with this error (an HTTP status), rather than not at
    all (a connection refused, a timeout). Stripe keeps such an answer under the request's idempotency key
    and replays it to every retry with that key; an unanswered request may have been made, and only a
    retry with the same key is safe.
    """

    def __init__(self, *args, answered=False, in_progress=False):
        super().__init__(*args)
        self.answered = answered
        # Another request under the same idempotency key is still being served (Stripe: 409, nothing saved
        # under the key): that request decides; a later retry with the key gets its answer.
        self.in_progress = in_progress


@dataclass(frozen=True)
class ProviderCheckout:
    id: str
    url: str
    payment_id: str = ""


@dataclass(frozen=True)
class ProviderRefund:
    """A refund the provider made, as far as it has gone: ``status`` is one of REFUND_OUTCOMES."""

    id: str
    status: str
    failure_reason: str = ""


# What a provider refund's own status means here (Stripe's five): the money reached the customer, is on
# its way (Stripe: ``pending``, or ``requires_action`` for a method that needs the customer), or did not
# and will not without someone acting (``failed``, ``canceled``: Stripe returned it to the balance).
REFUND_OUTCOMES = {
    "succeeded": "succeeded",
    "pending": "pending",
    "requires_action": "pending",
    "failed": "failed",
    "canceled": "failed",
}


def refund_outcome(status):
    """``succeeded``, ``pending`` or ``failed`` for a provider refund status; an unknown one waits (``pending``)."""
    return REFUND_OUTCOMES.get(status, "pending")


@dataclass(frozen=True)
class ProviderEvent:
    """What the webhook needs from a Stripe-shaped event."""

    id: str
    type: str
    checkout_id: str
    payment_id: str = ""
    client_reference_id: str = ""
    # What the session says was (or will be) charged: ``paid``, ``unpaid`` (a delayed method) or
    # ``no_payment_required``; the amount in the currency's minor units and the lower-case code.
    # None when the event does not carry them.
    payment_status: str = ""
    amount_total: int | None = None
    currency: str = ""
    metadata_booking_id: str = ""
    # A refund's event (``refund.updated``, ``refund.failed``): the refund, its status (refund_outcome) and
    # why it failed; ``checkout_id`` is then empty and ``amount_total`` is the amount refunded.
    refund_id: str = ""
    refund_status: str = ""
    failure_reason: str = ""
    # A dispute's event (``charge.dispute.*``): the dispute, its status (Stripe's, e.g. ``needs_response``,
    # ``won``, ``lost``), its reason and when the evidence is due (Unix time, None when not given);
    # ``amount_total`` is then the amount disputed.
    dispute_id: str = ""
    dispute_status: str = ""
    dispute_reason: str = ""
    evidence_due_by: int | None = None
    payload: dict = field(default_factory=dict, compare=False)


class PaymentProvider:
    """A hosted checkout for a booking, its refund and its expiry; every call made outside any transaction."""

    name = "base"
    # How long the provider replays an answer for the same idempotency key (Stripe: 24 hours). A refund
    # retried later than this is first looked up (find_refund), never blindly requested again.
    idempotency_window = timedelta(hours=24)

    def create_checkout(self, booking, checkout) -> ProviderCheckout:
        raise NotImplementedError

    def refund(self, checkout, *, idempotency_key) -> ProviderRefund:
        """Refund the checkout's payment in full under ``idempotency_key``; return the refund as the provider has it."""
        raise NotImplementedError

    def find_refund(self, checkout) -> ProviderRefund | None:
        """A refund the provider made or is making for the checkout's payment (not a failed one), or None."""
        raise NotImplementedError

    def get_refund(self, checkout) -> ProviderRefund:
        """The refund recorded on the checkout (``provider_refund_id``) as it stands now."""
        raise NotImplementedError

    def expire_checkout(self, checkout) -> None:
        """Make the checkout's hosted session unpayable (Stripe: expire the Checkout Session)."""
        raise NotImplementedError

    def checkout_outcome(self, checkout) -> "ProviderEvent | None":
        """How the checkout's hosted session ended, as the event that should have told it
        (``looked_up_type``), under an id of its own (``lookup_<session>_<type>``: a second look-up is the
        same event, and the inbox takes it once); None while the session is still open, or its delayed
        payment still settling. For ``reconcile_checkouts``: a webhook that never got through (an outage
        longer than the provider's retries, a wrong signing secret)."""
        raise NotImplementedError


def looked_up_type(session: dict, *, intent_status=None, processing=False):
    """The event a Stripe-shaped ``checkout.session`` stands for, or None while nothing is settled.

    ``processing``: the checkout is waiting for a delayed payment (its ``completed``/unpaid event came):
    only that payment's own outcome settles it, ``async_payment_succeeded`` (the session now paid) or
    ``async_payment_failed`` (its PaymentIntent, ``intent_status``, back to asking for a method or
    cancelled). Otherwise a complete session is ``completed`` (paid, or unpaid: a delayed payment under
    way) unless its delayed payment already failed, and an expired one ``expired``.
    """
    status, paid = session.get("status"), session.get("payment_status") in PAID
    if status == "expired" and not processing:
        return EXPIRED
    if status != "complete":
        return None
    if paid:
        return ASYNC_SUCCEEDED if processing else COMPLETED
    if intent_status in DELAYED_PAYMENT_FAILED:
        return ASYNC_FAILED
    return None if processing else COMPLETED


def looked_up_event(session: dict, event_type: str) -> "ProviderEvent":
    """The event a provider's session (a Stripe-shaped ``checkout.session`` object) stands for, read as a
    delivered one would be (``parse_event``), under the look-up's own id."""
    event = {"id": f"lookup_{session.get('id')}_{event_type}", "object": "event", "type": event_type}
    return parse_event(json.dumps({**event, "data": {"object": session}}).encode())


def sign(payload: bytes, *, secret=None, timestamp=None) -> str:
    """Return a ``Stripe-Signature`` header value for ``payload``, made by the stripe library."""
    secret = secret or settings.PAYMENT_WEBHOOK_SECRET
    timestamp = None if timestamp is None else int(timestamp)
    return stripe.WebhookSignature.generate_signature_header(payload.decode("utf-8"), secret, timestamp=timestamp)


def verify_signature(payload: bytes, header: str | None, *, secret=None, tolerance=SIGNATURE_TOLERANCE_SECONDS):
    """Check a ``Stripe-Signature`` header (t=..., one or more v1=...); raise InvalidSignature."""
    secret = secret or settings.PAYMENT_WEBHOOK_SECRET
    if not header:
        raise InvalidSignature()
    # Read as Stripe's verifier reads it (items split on "," and "=", nothing stripped, its *first* t), and
    # refuse what it would read otherwise than we do: a second t (ours the last, Stripe's the first, so a
    # future-dated signature could pass our check on a t of now appended). Each v1 is a SHA-256 in hex:
    # anything else is no signature, and a non-ASCII one would make Stripe's comparison raise (a 500).
    items = [item.split("=", 2) for item in header.split(",")]
    timestamps = [item[1] for item in items if item[0] == "t" and len(item) > 1]
    candidates = [item[1] if len(item) > 1 else "" for item in items if item[0] == "v1"]
    # ASCII digits, bounded: str.isdigit() accepts "²", which int() refuses (a 500).
    if len(timestamps) != 1 or not re.fullmatch(r"[0-9]{1,12}", timestamps[0]) or not candidates:
        raise InvalidSignature()
    if not all(re.fullmatch(r"[0-9a-f]{64}", candidate) for candidate in candidates):
        raise InvalidSignature()
    timestamp = timestamps[0]
    # Stripe's own verifier (below) refuses a stale timestamp but accepts any future one; we refuse one
    # more than ``tolerance`` ahead too: a signature dated in the future would stay replayable for as
    # long as it is ahead (a leaked or mis-clocked signer's event kept for later), and a provider whose
    # clock is that far off is a fault to surface, not to absorb. Within the tolerance, skew is fine.
    if int(timestamp) - time.time() > tolerance:
        raise InvalidSignature()
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:  # Stripe signs text; bytes that are not UTF-8 were never an event
        raise MalformedEvent()
    try:
        stripe.WebhookSignature.verify_header(text, header, secret, tolerance=tolerance)
    except stripe.SignatureVerificationError:
        raise InvalidSignature()


def _storable(value):
    """``value`` if it is a string PostgreSQL's text takes (no NUL, no lone surrogate), else None: a signed
    event is the provider's word, yet what it names is looked up and stored, and must never be a 500."""
    if not isinstance(value, str) or "\x00" in value:
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return value


def _text(value, limit=None):
    return (_storable(value) or "")[:limit]


def _whole(value):
    """An integer of the event (bool is an int in Python: ``true`` is not an amount), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def parse_event(payload: bytes) -> ProviderEvent:
    """Read a Stripe-shaped checkout, refund or dispute event; raise MalformedEvent for anything else."""
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):  # nested past the recursion limit: not an event
        raise MalformedEvent()
    if not isinstance(data, dict):
        raise MalformedEvent()
    event_id, event_type = _storable(data.get("id")), _storable(data.get("type"))
    obj = (data.get("data") or {}).get("object") if isinstance(data.get("data"), dict) else None
    if not (event_id and len(event_id) <= 255 and event_type):
        raise MalformedEvent()
    if not isinstance(obj, dict) or not _storable(obj.get("id")):
        raise MalformedEvent()
    payment_id = obj.get("payment_intent")
    if isinstance(payment_id, dict):  # an expanded PaymentIntent
        payment_id = payment_id.get("id")
    reference = obj.get("client_reference_id")
    kind = obj.get("object")
    is_refund, is_dispute = kind == "refund", kind == "dispute"
    amount = obj.get("amount" if is_refund or is_dispute else "amount_total")
    currency, status = obj.get("currency"), obj.get("payment_status")
    metadata = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    booking = metadata.get("booking_id")
    evidence = obj.get("evidence_details") if isinstance(obj.get("evidence_details"), dict) else {}
    return ProviderEvent(
        id=event_id,
        type=event_type,
        checkout_id="" if is_refund or is_dispute else obj["id"][:255],
        refund_id=obj["id"][:255] if is_refund else "",
        refund_status=refund_outcome(_text(obj.get("status"))) if is_refund else "",
        failure_reason=_text(obj.get("failure_reason"), 200) if is_refund else "",
        dispute_id=obj["id"][:255] if is_dispute else "",
        dispute_status=_text(obj.get("status"), 50) if is_dispute else "",
        dispute_reason=_text(obj.get("reason"), 100) if is_dispute else "",
        evidence_due_by=_whole(evidence.get("due_by")) if is_dispute else None,
        payment_id=_text(payment_id, 255),
        client_reference_id=_text(reference),
        payment_status=_text(status),
        amount_total=_whole(amount),
        currency=_text(currency),
        metadata_booking_id=_text(booking),
        payload=data,
    )
