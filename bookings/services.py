"""Booking work that calls out to the payment provider: commit first, then call, then record.

No lock is ever held while the provider is called: ``start_checkout`` commits the
hold and the checkout intent (state ``creating``) before ``create_provider_checkout``
talks to the provider, and a second short transaction stores its answer. Should the
process die in between, the hold simply expires, and a payment that still arrives
is matched through ``client_reference_id`` and settled by the webhook.
"""

import logging
import re
from dataclasses import dataclass

from django.db import transaction

from bookings.exceptions import BookingNotFound, PaymentProviderUnavailable
from bookings.models import Booking, Checkout, PaymentEvent
from bookings.payments import ProviderError, get_provider, provider_for
from bookings.payments.base import parse_event, verify_signature
from core.guards import database_refusals

logger = logging.getLogger(__name__)

COMPLETED = "checkout.session.completed"
EXPIRED = "checkout.session.expired"


def hold_in_transaction(*, tenant, package_id, date, customer_name, customer_email, origin_proposal_id=None):
    """Hold a place and record the checkout intent, inside the caller's transaction.

    Locks as ``Booking.objects.hold``: BOOKING_PACKAGE(package) shared, BOOKING_DATE,
    then the package's terms read after both. Raises PackageNotFound (unknown, inactive,
    deleted meanwhile or another tenant's package), DateInPast or DateUnavailable.
    Returns the held booking with ``.checkout``.
    """
    booking = Booking.objects.hold(
        package_id,
        date,
        tenant=tenant,
        customer_name=customer_name,
        customer_email=customer_email,
        origin_proposal_id=origin_proposal_id,
    )
    booking.checkout = Checkout.objects.record(booking, provider=get_provider().name)
    return booking


def create_provider_checkout(booking):
    """Call the provider for a committed hold, then store its checkout id and URL.

    Call outside any transaction. On a provider failure the hold is released and
    the checkout marked failed, then PaymentProviderUnavailable is raised.
    """
    checkout = booking.checkout
    provider = get_provider()
    try:
        created = provider.create_checkout(booking, checkout)
    except ProviderError as exc:
        logger.warning("payment provider failed for booking %s: %s", booking.pk, exc)
        with transaction.atomic():  # booking row, then checkout row: the lock order of every path
            Booking.objects.release_if_held(booking.pk)
            Checkout.objects.fail(checkout.pk, error=str(exc) or type(exc).__name__)
        raise PaymentProviderUnavailable()
    Checkout.objects.open(checkout.pk, provider_checkout_id=created.id, url=created.url, payment_id=created.payment_id)
    checkout.state, checkout.provider_checkout_id, checkout.url = Checkout.State.OPEN, created.id, created.url
    return checkout


def start_checkout(*, tenant, package_id, date, customer_name, customer_email):
    """Hold the date (transaction 1, committed), then create the provider checkout. Returns the booking."""
    with database_refusals(), transaction.atomic():
        booking = hold_in_transaction(
            tenant=tenant,
            package_id=package_id,
            date=date,
            customer_name=customer_name,
            customer_email=customer_email,
        )
    create_provider_checkout(booking)
    return booking


def cancel_booking(booking_id, *, tenant=None):
    """Cancel a booking; a paid one is refunded after the cancellation commits.

    The cancellation and the refund owed (checkout refund ``pending``) commit in one
    transaction, so a crash before the provider call leaves a refund that
    ``retry_refunds`` finds, never a ``refund_pending`` booking nobody will refund.
    """
    claimed = False
    with database_refusals(), transaction.atomic():
        booking = Booking.objects.cancel(booking_id, tenant=tenant)
        if booking.status == Booking.Status.REFUND_PENDING:
            checkout_pk = Checkout.objects.filter(booking_id=booking.pk).values_list("pk", flat=True).first()
            if checkout_pk is not None:
                claimed = Checkout.objects.request_refund(checkout_pk)
    if claimed:  # only the caller whose transaction claimed the refund asks the provider
        refund_booking(booking.pk)
        booking.refresh_from_db()
    return booking


def refund_booking(booking_id):
    """Ask the provider for the refund already recorded as pending; mark it refunded or failed.

    Call outside any transaction, only after this caller's own committed claim
    (``request_refund`` or ``claim_refund_retry`` returned True). A refund that is not
    ``pending`` (never claimed, failed, done) is not this caller's to make: the provider
    is not asked. Returns True when the booking is now refunded. A failure leaves the
    checkout's refund ``failed`` for ``retry_refunds``.
    """
    checkout = Checkout.objects.select_related("booking__package").filter(booking_id=booking_id).first()
    if checkout is None:
        raise BookingNotFound()
    if checkout.refund_state != Checkout.RefundState.PENDING:
        return False  # no refund claimed for this caller: never ask the provider unasked
    try:
        refund_id = provider_for(checkout.provider).refund(checkout)
    except ProviderError as exc:
        logger.warning("refund failed for booking %s: %s", booking_id, exc)
        Checkout.objects.refund_failed(checkout.pk, error=str(exc) or type(exc).__name__)
        return False
    with transaction.atomic():
        if Checkout.objects.refund_succeeded(checkout.pk, refund_id=refund_id):
            Booking.objects.complete_refund(booking_id)
    return True


def retry_refund(booking_id):
    """Retry a failed refund once; the claim makes concurrent retriers call the provider at most once."""
    checkout = Checkout.objects.filter(booking_id=booking_id).first()
    if checkout is None or not Checkout.objects.claim_refund_retry(checkout.pk):
        return False
    return refund_booking(booking_id)


@dataclass
class WebhookResult:
    event_id: str
    duplicate: bool
    result: str
    booking_id: int | None = None


def _find_checkout(event):
    checkout = Checkout.objects.filter(provider_checkout_id=event.checkout_id).first()
    if checkout is None and re.fullmatch(r"[0-9]{1,18}", event.client_reference_id):
        checkout = Checkout.objects.filter(pk=int(event.client_reference_id)).first()
    return checkout


def receive_payment_event(payload: bytes, signature: str | None, *, provider_name=None):
    """Verify, store once and process once a provider event; refund after commit if owed.

    The event row is inserted (or, for a repeat, locked) first; processing takes
    BOOKING_PACKAGE (shared), BOOKING_DATE(package, date), the booking row and then
    the checkout row through the managers. A paid booking that cannot be placed
    becomes ``refund_pending`` with its refund claimed in the same transaction.
    Raises InvalidSignature or MalformedEvent before anything is stored.
    """
    verify_signature(payload, signature)
    event = parse_event(payload)
    refund_owed = None
    with database_refusals(), transaction.atomic():
        event_pk, processed = PaymentEvent.objects.receive(
            provider=provider_name or get_provider().name, event_id=event.id, type=event.type, payload=event.payload
        )
        if processed:
            stored = PaymentEvent.objects.filter(pk=event_pk).values("result", "booking_id").get()
            return WebhookResult(event.id, True, stored["result"], stored["booking_id"])
        checkout = _find_checkout(event) if event.type in (COMPLETED, EXPIRED) else None
        booking_id = checkout.booking_id if checkout else None
        if event.type not in (COMPLETED, EXPIRED):
            result = "ignored_type"
        elif checkout is None:
            result = "ignored_unknown_checkout"
        elif event.type == COMPLETED:
            _booking, result = Booking.objects.confirm_payment(checkout.booking_id)
            Checkout.objects.mark_completed(
                checkout.pk, provider_checkout_id=event.checkout_id, payment_id=event.payment_id
            )
            if result == Booking.Status.REFUND_PENDING and Checkout.objects.request_refund(checkout.pk):
                refund_owed = checkout.booking_id  # claimed by this delivery: asked for after commit
        else:  # booking row before checkout row, as in confirm_payment and cancel (no deadlock)
            result = "released" if Booking.objects.release_if_held(checkout.booking_id) else "unchanged"
            Checkout.objects.mark_expired(checkout.pk, provider_checkout_id=event.checkout_id)
        PaymentEvent.objects.mark_processed(event_pk, result=result, booking_id=booking_id)
    if refund_owed is not None:
        refund_booking(refund_owed)
    return WebhookResult(event.id, False, result, booking_id)


def sandbox_deliver(checkout, event_type):
    """Build, sign and deliver a sandbox event through the same path as the webhook endpoint."""
    from bookings.payments.sandbox import build_event

    payload, signature = build_event(checkout, event_type)
    return receive_payment_event(payload, signature, provider_name="sandbox")
