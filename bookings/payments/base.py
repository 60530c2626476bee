"""The provider interface, and the Stripe webhook scheme every provider here speaks."""

import hashlib
import hmac
import json
import re
import time
from dataclasses import dataclass, field

from django.conf import settings

from bookings.exceptions import InvalidSignature, MalformedEvent

SIGNATURE_TOLERANCE_SECONDS = 300


class ProviderError(Exception):
    """The provider refused or could not be reached; nothing was created or refunded."""


@dataclass(frozen=True)
class ProviderCheckout:
    id: str
    url: str
    payment_id: str = ""


@dataclass(frozen=True)
class ProviderEvent:
    """What the webhook needs from a Stripe-shaped event."""

    id: str
    type: str
    checkout_id: str
    payment_id: str = ""
    client_reference_id: str = ""
    payload: dict = field(default_factory=dict, compare=False)


class PaymentProvider:
    """Create a hosted checkout for a booking and refund it; both called outside any transaction."""

    name = "base"

    def create_checkout(self, booking, checkout) -> ProviderCheckout:
        raise NotImplementedError

    def refund(self, checkout) -> str:
        """Refund the checkout's payment in full; return the provider's refund id."""
        raise NotImplementedError


def sign(payload: bytes, *, secret=None, timestamp=None) -> str:
    """Return a ``Stripe-Signature`` header value for ``payload``."""
    secret = secret or settings.PAYMENT_WEBHOOK_SECRET
    timestamp = int(time.time()) if timestamp is None else int(timestamp)
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify_signature(payload: bytes, header: str | None, *, secret=None, tolerance=SIGNATURE_TOLERANCE_SECONDS):
    """Check a ``Stripe-Signature`` header (t=..., one or more v1=...); raise InvalidSignature."""
    secret = secret or settings.PAYMENT_WEBHOOK_SECRET
    if not header:
        raise InvalidSignature()
    timestamp, candidates = None, []
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        if key == "t":
            timestamp = value
        elif key == "v1":
            candidates.append(value)
    # ASCII digits, bounded: str.isdigit() accepts "²", which int() refuses (a 500).
    if timestamp is None or not re.fullmatch(r"[0-9]{1,12}", timestamp) or not candidates:
        raise InvalidSignature()
    # Both directions are bounded. Stripe's own verifier accepts any future timestamp; we refuse one
    # more than ``tolerance`` ahead too: a signature dated in the future would stay replayable for as
    # long as it is ahead (a leaked or mis-clocked signer's event kept for later), and a provider whose
    # clock is that far off is a fault to surface, not to absorb. Within the tolerance, skew is fine.
    if abs(time.time() - int(timestamp)) > tolerance:
        raise InvalidSignature()
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()
    if not any(hmac.compare_digest(expected, candidate) for candidate in candidates):
        raise InvalidSignature()


def parse_event(payload: bytes) -> ProviderEvent:
    """Read a Stripe-shaped checkout event; raise MalformedEvent for anything else."""
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise MalformedEvent()
    if not isinstance(data, dict):
        raise MalformedEvent()
    event_id, event_type = data.get("id"), data.get("type")
    obj = (data.get("data") or {}).get("object") if isinstance(data.get("data"), dict) else None
    if not (isinstance(event_id, str) and 0 < len(event_id) <= 255 and isinstance(event_type, str) and event_type):
        raise MalformedEvent()
    if not isinstance(obj, dict) or not isinstance(obj.get("id"), str) or not obj["id"]:
        raise MalformedEvent()
    payment_id = obj.get("payment_intent")
    if isinstance(payment_id, dict):  # an expanded PaymentIntent
        payment_id = payment_id.get("id")
    reference = obj.get("client_reference_id")
    return ProviderEvent(
        id=event_id,
        type=event_type,
        checkout_id=obj["id"][:255],
        payment_id=payment_id if isinstance(payment_id, str) else "",
        client_reference_id=reference if isinstance(reference, str) else "",
        payload=data,
    )
