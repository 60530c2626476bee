"""Booking work that calls out to the payment provider: commit first, then call, then record.

No lock is ever held while the provider is called: ``start_checkout`` commits the
hold and the checkout intent (state ``creating``) before ``create_provider_checkout``
talks to the provider, and a second short transaction stores its answer. Should the
process die in between, the hold simply expires, and a payment that still arrives
is matched through ``client_reference_id`` and settled by the webhook.

A signed event is trusted only as far as it matches (``match_event``): the checkout
it names by its session id (or, for a checkout whose session id was never stored,
by ``client_reference_id`` and ``metadata.booking_id`` together), the amount and the
currency that checkout charges. Anything else is stored for an operator
(``needs_review``) and changes nothing.
"""

import logging
import re
from collections import Counter
from dataclasses import dataclass

import pghistory
from django.db import transaction
from django.db.models import F
from django.db.models.functions import Now

from bookings import notifications
from bookings.exceptions import BookingNotFound, PaymentProviderUnavailable
from bookings.managers import REFUND_OWED, REFUND_RECORDED
from bookings.models import Booking, Checkout, PaymentEvent
from bookings.payments import ProviderError, ProviderRefund, get_provider, provider_for
from bookings.payments.base import (
    ASYNC_FAILED,
    ASYNC_SUCCEEDED,
    COMPLETED,
    EXPIRED,
    PAID,
    parse_event,
    verify_signature,
)
from bookings.payments.sandbox import (
    REFUND_FAILED,
    REFUND_UPDATED,
    build_refund_event,
)
from core import metrics
from core.db import LockNamespace, advisory_xact_lock, update_skipping_locked
from core.exceptions import DomainError
from core.guards import SweepResult, database_refusals
from core.money import to_minor_units

logger = logging.getLogger(__name__)

HANDLED = (COMPLETED, EXPIRED, ASYNC_SUCCEEDED, ASYNC_FAILED)
# A refund event's result by the refund state it recorded.
REFUND_EVENT_RESULTS = {
    Checkout.RefundState.SUCCEEDED: "refunded",
    Checkout.RefundState.SUBMITTED: "refund_submitted",
    Checkout.RefundState.EXHAUSTED: "refund_failed",
}
# A refund's events. Which of them Stripe sends for a card payment's refund depends on the endpoint's API
# version (``refund.*`` for every refund since 2024-10-28.acacia, ``charge.refund.updated`` before and
# beside): each is handled, and a twin of a change already recorded changes nothing.
REFUND_EVENTS = ("refund.created", REFUND_UPDATED, REFUND_FAILED, "charge.refund.updated")
# A dispute's (a chargeback's) events: the customer's bank took the payment back, or may. Nothing of the
# booking changes (whether it stands is the operator's call, and the evidence is answered at the provider);
# each is recorded against its booking, and the operators are told when one opens and when it closes.
DISPUTE_CREATED, DISPUTE_CLOSED = "charge.dispute.created", "charge.dispute.closed"
DISPUTE_EVENTS = (
    DISPUTE_CREATED,
    "charge.dispute.updated",
    DISPUTE_CLOSED,
    "charge.dispute.funds_withdrawn",
    "charge.dispute.funds_reinstated",
)


def hold_in_transaction(*, tenant, package_id, date, customer_name, customer_email, origin_proposal_id=None, then=None):
    """Hold a place and record the checkout intent, inside the caller's transaction.

    Locks as ``Booking.objects.hold``: BOOKING_PACKAGE(package) shared, BOOKING_DATE,
    then the package's terms read after both. Raises PackageNotFound (unknown, inactive,
    deleted meanwhile or another tenant's package), DateInPast or DateUnavailable.
    Returns the held booking with ``.checkout``; ``then``: a write in the same statement, as
    ``Booking.objects.hold``'s (a proposal's execution).
    """
    return Booking.objects.hold(
        package_id,
        date,
        tenant=tenant,
        customer_name=customer_name,
        customer_email=customer_email,
        origin_proposal_id=origin_proposal_id,
        checkout_provider=get_provider().name,  # the checkout intent, in the booking's INSERT
        then=then,
    )


def create_provider_checkout(booking):
    """Call the provider for a committed hold, then store its checkout id and URL.

    Call outside any transaction. On a provider failure the hold is released and
    the checkout marked failed, then PaymentProviderUnavailable is raised. When the
    booking is no longer held by the time the provider answers (its hold lapsed, or it
    was cancelled or released meanwhile), the checkout is not opened (no pay link is
    e-mailed): it is recorded ``expired``, the provider's session closed, and
    PaymentProviderUnavailable raised too (nothing was charged, the date is free: the
    caller's answer is "try again", never a booking without a way to pay it).

    Two calls for one hold (a request still waiting for the provider, and the retry that resumed it):
    only a checkout still ``creating`` is failed, abandoned or has its hold released; one the other
    opened is the answer; a provider refusal for overlapping the other (``in_progress``) leaves all to it.
    """
    checkout = booking.checkout
    provider = get_provider()
    try:
        created = provider.create_checkout(booking, checkout)
    except ProviderError as exc:
        logger.warning("payment provider failed for booking %s: %s", booking.pk, exc)
        if exc.in_progress:  # the other call for this hold (its request still alive) decides: left as it is
            raise PaymentProviderUnavailable() from exc
        with transaction.atomic():  # booking row, then checkout row: the lock order of every path
            Booking.objects.lock_row(booking.pk)
            # Only a checkout still creating is this call's to fail, and its hold to release: the other call for
            # the same hold (the original request, still waiting when its retry resumed it) may have opened it,
            # and that customer is paying through it: answered as it stands.
            failed = Checkout.objects.fail(checkout.pk, error=str(exc) or type(exc).__name__)
            if failed:
                Booking.objects.release_if_held(booking.pk)
        if failed or not _answered_as_it_stands(checkout):
            raise PaymentProviderUnavailable() from exc
        return checkout
    opened = Checkout.objects.open(
        checkout.pk, provider_checkout_id=created.id, url=created.url, payment_id=created.payment_id, booking=booking
    )
    checkout.provider_checkout_id = created.id
    if opened:
        checkout.state, checkout.url = Checkout.State.OPEN, created.url
        return checkout
    # The booking moved on while the provider answered (cancelled, released, its hold lapsed, its proposal
    # reopened): nobody else will close the session this call made, so record it expired (creating ->
    # expired, with its id, so a payment that still arrives is matched and refunded) and close it after
    # commit. A checkout no longer creating was settled by another path first (a payment event; or the
    # other call for the same hold, which opened it with this very session and e-mailed its link): left
    # as it is, and answered as it now reads.
    with transaction.atomic():
        abandoned = Checkout.objects.abandon(checkout.pk, provider_checkout_id=created.id)
    if abandoned or not _answered_as_it_stands(checkout):
        # Ours to close: abandoned here, or failed by the other call (its provider call refused while this one
        # waited) with the hold released: a session nobody will pay through.
        checkout.state = Checkout.State.EXPIRED
        checkout.provider_checkout_id = created.id
        expire_provider_checkout(checkout)
        raise PaymentProviderUnavailable()
    return checkout


def _answered_as_it_stands(checkout):
    """Reload ``checkout`` (settled by another path meanwhile) and say whether it can be the answer: opened,
    or already paid. A failed or expired one is no way to pay: the caller answers 503."""
    checkout.refresh_from_db(fields=["state", "url", "provider_checkout_id"])
    return checkout.state in (Checkout.State.OPEN, Checkout.State.PROCESSING, Checkout.State.COMPLETED)


def start_checkout(*, tenant, package_id, date, customer_name, customer_email, note=None):
    """Hold the date (transaction 1, committed), then create the provider checkout. Returns the booking.

    ``note(booking_id)``, when given, runs in the hold's transaction (an Idempotency-Key's ``note_work``).
    """
    with database_refusals(), transaction.atomic():
        booking = hold_in_transaction(
            tenant=tenant,
            package_id=package_id,
            date=date,
            customer_name=customer_name,
            customer_email=customer_email,
        )
        if note is not None:
            note(booking.pk)
    create_provider_checkout(booking)
    return booking


def resume_checkout(booking_id):
    """The booking of a checkout whose request died or failed before it answered, its provider checkout
    opened first where that request committed the hold but never opened it. Returns the booking, with
    ``.checkout``; or None when that hold was undone before its checkout ever opened (the provider refused,
    or the hold ended first: the request's answer was a 503), so a retry holds anew.

    The provider is asked as the first time, under the same idempotency key (``lockstep-checkout-<id>``):
    a session the dead request had made comes back, not a second one. A checkout settled since (opened,
    paid, expired) is answered as it is. Raises PaymentProviderUnavailable as create_provider_checkout.
    """
    # with its package's name, as Booking.objects.hold returns it: what the opening's e-mail names
    booking = Booking.objects.select_related("checkout").annotate(package_name=F("package__name")).get(pk=booking_id)
    checkout = booking.checkout
    if checkout.state == Checkout.State.CREATING:
        create_provider_checkout(booking)
    elif checkout.state in (Checkout.State.FAILED, Checkout.State.EXPIRED) and not checkout.url:
        return None
    return booking


def cancel_booking(booking_id, *, tenant=None, version=None, note=None):
    """Cancel a booking (at ``version``, when given: ``Booking.objects.cancel``); a paid one is refunded
    after the cancellation commits.

    The cancellation and the refund owed (checkout refund ``pending``) commit in one
    transaction, so a crash before the provider call leaves a refund that
    ``retry_refunds`` finds, never a ``refund_pending`` booking nobody will refund.
    A held booking's provider session is expired after the commit (``expire_checkout``),
    so the customer can no longer pay it; should that fail (logged, not fatal) and a
    payment still arrive, confirm_payment refunds it, once.
    """
    claimed = False
    with database_refusals(), transaction.atomic():
        booking = Booking.objects.cancel(booking_id, tenant=tenant, version=version)
        if note is not None:  # an Idempotency-Key's note_work: a retry after a crash answers this cancel
            note(booking.pk)
        checkout = Checkout.objects.filter(booking_id=booking.pk).first()
        if booking.status == Booking.Status.REFUND_PENDING and checkout is not None:
            claimed = Checkout.objects.request_refund(checkout.pk)
    if claimed:  # only the caller whose transaction claimed the refund asks the provider
        refund_booking(booking.pk)
        booking.refresh_from_db()
    elif checkout is not None and checkout.state == Checkout.State.OPEN:  # still payable: close it
        expire_provider_checkout(checkout)
    return booking


def release_hold(booking_id, *, tenant=None):
    """Release a hold (``Booking.objects.release``: its place free at once), then close its provider session.

    The release commits first (one statement); the provider is asked after, outside any transaction,
    as a cancel does, so the customer can no longer pay for a place that may go to someone else. Should
    closing fail (logged, not fatal) and a payment still arrive, confirm_payment places or refunds it.
    """
    Booking.objects.release(booking_id, tenant=tenant)
    checkout = Checkout.objects.filter(booking_id=booking_id).first()
    if checkout is not None and checkout.state == Checkout.State.OPEN:
        expire_provider_checkout(checkout)
    return True


def expire_provider_checkout(checkout):
    """Ask the provider to expire an open session; a failure is logged, never raised (the cancel stands)."""
    try:
        provider_for(checkout.provider).expire_checkout(checkout)
    except (ProviderError, DomainError) as exc:
        logger.warning("could not expire checkout %s of booking %s: %s", checkout.pk, checkout.booking_id, exc)
        return False
    return True


def refund_booking(booking_id):
    """Ask the provider for the refund already recorded as pending; record how far it went.

    Call outside any transaction, only after this caller's own committed claim
    (``request_refund`` or ``claim_refund_retry`` returned True). A refund that is not
    ``pending`` (never claimed, failed, done) is not this caller's to make: the provider
    is not asked (None). The provider's answer is recorded by ``record_refund``: succeeded
    (the booking refunded), still pending (``submitted``, settled by its event) or failed
    (``exhausted``, for an operator); no answer (ProviderError) leaves the refund ``failed``
    for ``retry_refunds`` (or ``exhausted`` after REFUND_MAX_ATTEMPTS). Returns the refund
    state this caller recorded, or None when it recorded nothing (its event came first).
    """
    checkout = Checkout.objects.select_related("booking__package").filter(booking_id=booking_id).first()
    if checkout is None:
        raise BookingNotFound()
    if checkout.refund_state != Checkout.RefundState.PENDING:
        return None  # no refund claimed for this caller: never ask the provider unasked
    provider = provider_for(checkout.provider)
    try:
        refund = None
        if checkout.refund_key_round or _past_idempotency_window(checkout, provider):
            # A new key (the provider answered the last one with an error), or the provider no longer replays
            # this one: a refund made by an earlier attempt whose answer was lost (or whose caller died) would
            # be made twice. Ask first; record the one found.
            refund = provider.find_refund(checkout)
        if refund is None:
            refund = provider.refund(checkout, idempotency_key=refund_idempotency_key(checkout))
    except ProviderError as exc:
        logger.warning("refund failed for booking %s: %s", booking_id, exc)
        state = Checkout.objects.refund_failed(
            checkout.pk, error=str(exc) or type(exc).__name__, answered=getattr(exc, "answered", False)
        )
        if state == Checkout.RefundState.EXHAUSTED:
            _gave_up(booking_id, f"after {checkout.refund_attempts + 1} attempts")
        return state
    with transaction.atomic():
        Booking.objects.lock_row(booking_id)  # booking row before checkout row: the order of every path
        return _record_refund(checkout, refund, was=Checkout.RefundState.PENDING)


def _record_refund(checkout, refund, *, was):
    """Record the provider's refund from ``was`` and move the booking with it; return the state recorded, or None.

    Under the caller's locks (the booking row, then the checkout row taken here): a succeeded
    refund refunds the booking, a failed one leaves it (or puts it back) ``refund_pending`` and
    alerts the operators. The one place that records a refund: its answer (``refund_booking``),
    its event (``_settle_refund``) and its look-up (``check_submitted_refunds``).
    """
    if not Checkout.objects.record_refund(checkout.pk, refund, was=was):
        return None
    if refund.status == "succeeded":
        Booking.objects.complete_refund(checkout.booking_id, refund_id=refund.id)
    elif refund.status == "failed":
        # a refund that had succeeded is owed again
        Booking.objects.reopen_refund(checkout.booking_id, refund_id=refund.id)
        _gave_up(
            checkout.booking_id, f"the provider failed refund {refund.id} ({refund.failure_reason or 'no reason'})"
        )
    return REFUND_RECORDED[refund.status]


def reconcile_checkouts(limit=100):
    """Ask the provider how each unheard checkout's session ended (``Checkout.objects.unheard``: still ``open``
    well after its hold ended, or waiting for a delayed payment) and settle it as its lost event would have
    (``process_payment_event``): a payment confirms the booking if its date is still free, else is refunded; an
    expiry closes the checkout; a delayed payment that failed releases its place.

    A webhook that never got through (an outage longer than the provider's retries, a wrong signing secret)
    otherwise left the money taken and nothing told: the booking expired, the checkout ``open`` for good.
    The provider is asked outside any transaction, at most ``limit`` checkouts a run, the least recently asked
    first (each is stamped ``looked_up_at`` as it is asked); a session the provider still calls open, a question
    it did not answer, or an answer that cannot settle the checkout (a mismatch left for review) is asked again
    in its turn, after the others. Returns a SweepResult whose ``done`` counts the checkouts settled.
    """
    result = SweepResult()
    for checkout in Checkout.objects.unheard().select_related("booking")[:limit]:
        # stamped before the provider is asked: a question that fails, or a process that dies, still moves it back.
        # A row another transaction holds (its webhook settling it now) is skipped, never waited for.
        if not update_skipping_locked(Checkout.objects.filter(pk=checkout.pk), looked_up_at=Now()):
            continue
        try:
            event = provider_for(checkout.provider).checkout_outcome(checkout)
        except ProviderError as exc:
            logger.warning("could not ask how checkout %s ended: %s", checkout.pk, exc)
            result.skipped.append((checkout.booking_id, PaymentProviderUnavailable()))
            continue
        if event is None:
            continue
        try:
            settled = process_payment_event(event, provider_name=checkout.provider)
        except DomainError as refusal:
            result.skipped.append((checkout.booking_id, refusal))
            continue
        if not settled.duplicate:
            result.done += 1
            logger.warning(
                "checkout %s: its session ended (%s) and no event said so; settled: %s",
                checkout.pk,
                event.type,
                settled.result,
            )
    return result


def check_submitted_refunds():
    """Ask the provider about every submitted refund whose event has not come (``refunds_to_check``); record it.

    Each look-up is claimed first (``claim_refund_check``: one sweep asks, the next look-up is
    due REFUND_CHECK_EVERY later), the provider is asked outside any transaction, and the answer
    recorded under the booking row as the event would be. A refund still not settled (or not
    answered for) REFUND_STUCK_AFTER after it was first asked for is told to the operators, once
    per refund. Returns a SweepResult whose ``done`` counts the refunds that moved on (succeeded
    or failed).
    """
    result = SweepResult()
    for checkout in Checkout.objects.refunds_to_check().order_by("pk"):
        try:
            with database_refusals():
                if not Checkout.objects.claim_refund_check(checkout.pk):
                    continue
                try:
                    refund = provider_for(checkout.provider).get_refund(checkout)
                    with transaction.atomic():
                        Booking.objects.lock_row(checkout.booking_id)
                        moved = _record_refund(checkout, refund, was=Checkout.RefundState.SUBMITTED) is not None
                    result.done += moved
                except ProviderError as exc:
                    moved = False
                    logger.warning(
                        "could not look up refund %s of booking %s: %s",
                        checkout.provider_refund_id,
                        checkout.booking_id,
                        exc,
                    )
                if not moved:
                    with transaction.atomic():
                        if Checkout.objects.stuck_refunds().filter(pk=checkout.pk).exists():
                            notifications.owe_stuck_refund_alert(
                                checkout.booking_id, refund=checkout.provider_refund_id
                            )
        except DomainError as refusal:
            result.skipped.append((checkout.booking_id, refusal))
    return result


def _gave_up(booking_id, why):
    """Count and log a refund left for an operator (counted once its state is committed)."""
    transaction.on_commit(metrics.REFUNDS_FAILED.inc)
    logger.error("refund of booking %s gave up %s: an operator must act", booking_id, why)


def refund_idempotency_key(checkout):
    """The provider idempotency key of a checkout's refund: the same on every attempt at one refund that
    the provider did not answer (a timeout, a refused connection: the refund may have been made).

    An attempt the provider answered with an error moves the key on (``refund_key_round``): Stripe keeps
    that answer under the key and replays it, so a retry under it would never be a new attempt. A refund
    the provider made and then failed is recorded (``provider_refund_id``, refund ``exhausted``): an
    operator's retry asks for a new one under a new key, since the old key would replay the failed refund.
    """
    key = f"lockstep-refund-{checkout.pk}"
    if checkout.refund_key_round:
        key = f"{key}-{checkout.refund_key_round}"
    return f"{key}-after-{checkout.provider_refund_id}" if checkout.provider_refund_id else key


def _past_idempotency_window(checkout, provider):
    """Whether the refund was first requested longer ago than the provider replays a key (database clock)."""
    window_start = Now() - provider.idempotency_window
    return Checkout.objects.filter(pk=checkout.pk, refund_requested_at__lte=window_start).exists()


def retry_refund(booking_id, *, operator=False):
    """Retry a refund once if it is due; the claim makes concurrent retriers call the provider at most once.

    ``operator=True`` (the admin's explicit retry) also retries a refund still backing off
    and one left ``exhausted``. Returns the refund state the retry recorded (``refund_booking``),
    or None when there was nothing to retry.
    """
    checkout = Checkout.objects.filter(booking_id=booking_id).first()
    if checkout is None or not Checkout.objects.claim_refund_retry(checkout.pk, operator=operator):
        return None
    return refund_booking(booking_id)


def retry_due_refunds():
    """Retry every refund due (``refunds_to_retry``), one by one; return (SweepResult, Counter of states recorded).

    Each retry is judged and claimed on its own (``retry_refund``), so a refund whose row is busy
    past lock_timeout (LockContended) or refused is left in ``skipped`` for the next run while the
    later ones are still retried. ``done`` counts the refunds made; the counter, each one this
    sweep asked the provider for by the refund state it was left in (``succeeded``, ``submitted``,
    ``failed``, ``exhausted``).
    """
    result, recorded = SweepResult(), Counter()
    for booking_id in Checkout.objects.refunds_to_retry().order_by("pk").values_list("booking_id", flat=True):
        try:
            with database_refusals():  # recording a refund opens a plain atomic block: translate its refusals here
                state = retry_refund(booking_id)
        except DomainError as refusal:
            result.skipped.append((booking_id, refusal))
            continue
        if state is not None:  # None: another retrier claimed it, or its event recorded it first
            recorded[state] += 1
        result.done += state == Checkout.RefundState.SUCCEEDED
    return result, recorded


@dataclass
class WebhookResult:
    event_id: str
    duplicate: bool
    result: str
    booking_id: int | None = None


def _candidate(event):
    """The checkout an event names, read without locks: by its session id, else by ``client_reference_id``.

    Returns (checkout or None, result code when it cannot be ours). ``match_event``
    judges the candidate again once its rows are locked.
    """
    checkout = Checkout.objects.filter(provider_checkout_id=event.checkout_id).first()
    if checkout is None and re.fullmatch(r"[0-9]{1,18}", event.client_reference_id):
        checkout = Checkout.objects.filter(pk=int(event.client_reference_id)).first()
    return checkout, ("unknown_checkout" if checkout is None else "")


def match_event(event, checkout):
    """Why a signed event does not belong to ``checkout`` (a result code), or "" when it does.

    - the session: the checkout's stored provider session id, or, only for a checkout
      with none stored yet (the provider's answer was lost), ``client_reference_id``
      naming this checkout *and* ``metadata.booking_id`` naming its booking;
    - the money: ``currency`` and ``amount_total`` (minor units, core.money) equal to
      what the checkout charges; required on events that settle a payment, compared
      when present on the others.
    """
    if checkout.provider_checkout_id is not None:
        if checkout.provider_checkout_id != event.checkout_id:
            return "mismatch_session"
    elif event.client_reference_id != str(checkout.pk) or event.metadata_booking_id != str(checkout.booking_id):
        return "mismatch_session"
    required = event.type in (COMPLETED, ASYNC_SUCCEEDED)
    if (required or event.currency) and event.currency != checkout.currency.lower():
        return "mismatch_currency"
    if (required or event.amount_total is not None) and event.amount_total != to_minor_units(
        checkout.amount, checkout.currency
    ):
        return "mismatch_amount"
    return ""


def _claims_money(event):
    return event.type == ASYNC_SUCCEEDED or (event.type == COMPLETED and event.payment_status in PAID)


def _settle(event, checkout):
    """Apply a matched event under the locks taken by ``lock_settlement``; return (result, refund owed)."""
    booking_id, refund_owed = checkout.booking_id, False
    if event.type == COMPLETED and event.payment_status not in (*PAID, "unpaid"):
        return "unexpected_payment_status", False
    if event.type == ASYNC_SUCCEEDED or (event.type == COMPLETED and event.payment_status in PAID):
        _booking, result = Booking.objects.confirm_payment(booking_id)
        Checkout.objects.mark_completed(
            checkout.pk, provider_checkout_id=event.checkout_id, payment_id=event.payment_id
        )
        if result == Booking.Status.REFUND_PENDING and Checkout.objects.request_refund(checkout.pk):
            refund_owed = True  # claimed by this delivery: asked for after commit
        return result, refund_owed
    if event.type == COMPLETED:  # "unpaid": a delayed method, settled later by async_payment_*
        _booking, result = Booking.objects.await_payment(
            booking_id, checkout_id=checkout.pk, provider_checkout_id=event.checkout_id, payment_id=event.payment_id
        )
        return result, False
    if event.type == ASYNC_FAILED:  # booking row before checkout row, as everywhere
        released = Booking.objects.payment_failed(booking_id)
        failed = Checkout.objects.mark_payment_failed(checkout.pk, provider_checkout_id=event.checkout_id)
        return ("released" if released else "payment_failed" if failed else "unchanged"), False
    released = Booking.objects.release_if_held(booking_id)  # EXPIRED
    Checkout.objects.mark_expired(checkout.pk, provider_checkout_id=event.checkout_id)
    return ("released" if released else "unchanged"), False


def _refund_candidate(event):
    """The checkout a refund event names, read without locks: by the refund recorded, else by the payment refunded."""
    checkout = None
    if event.refund_id:
        checkout = Checkout.objects.filter(provider_refund_id=event.refund_id).first()
        if checkout is None and event.payment_id:
            checkout = Checkout.objects.filter(provider_payment_id=event.payment_id).first()
    return checkout, ("unknown_refund" if checkout is None else "")


def match_refund(event, checkout):
    """Why a signed refund event does not belong to ``checkout`` (a result code), or "" when it does.

    - the refund: the one recorded on the checkout, or, while a refund is owed and its
      refund not recorded (REFUND_OWED: ``pending``, ``failed``, ``exhausted``), a new refund
      of the checkout's payment (its answer lost or not in yet). Any refund the provider
      already failed for this checkout (``failed_refund_ids``), whatever its event says and
      however late it comes, is ``superseded_refund``. A refund of our payment that Lockstep
      did not ask for (none owed, or another than the one recorded) is ``unrequested_refund``,
      for an operator.
    - the money: ``currency`` and ``amount`` equal to what the checkout charged (a full refund).
    """
    if event.refund_id in checkout.failed_refund_ids:
        return "superseded_refund"
    recorded = event.refund_id == checkout.provider_refund_id
    owed_here = checkout.refund_state in REFUND_OWED and event.payment_id == checkout.provider_payment_id
    if not recorded and not (owed_here and event.payment_id):
        return "unrequested_refund"
    if event.currency != checkout.currency.lower():
        return "mismatch_currency"
    if event.amount_total != to_minor_units(checkout.amount, checkout.currency):
        return "mismatch_amount"
    return ""


def _settle_refund(event, checkout):
    """Apply a matched refund event under the locks taken by ``lock_settlement``; return the result code."""
    refund = ProviderRefund(id=event.refund_id, status=event.refund_status, failure_reason=event.failure_reason)
    recorded = _record_refund(checkout, refund, was=checkout.refund_state)
    return REFUND_EVENT_RESULTS.get(recorded, "unchanged")  # None: repeated, or older than what is recorded


def _dispute_candidate(event):
    """The checkout whose payment a dispute event names, or "unknown_dispute"."""
    checkout = None
    if event.payment_id:
        checkout = Checkout.objects.filter(provider_payment_id=event.payment_id).first()
    return checkout, ("unknown_dispute" if checkout is None else "")


def match_dispute(event, checkout):
    """Why a dispute event does not fit ``checkout`` (a result code), or "": the checkout's currency, and
    no more than it charged (a dispute may be for part of the payment)."""
    if event.currency != checkout.currency.lower():
        return "mismatch_currency"
    charged = to_minor_units(checkout.amount, checkout.currency)
    if event.amount_total is None or not 0 < event.amount_total <= charged:
        return "mismatch_amount"
    return ""


def _note_dispute(event, checkout):
    """Record a matched dispute event's news (its result code) and tell the operators when it opens or closes.

    Changes no row of the booking: an alert per dispute and result (notifications.owe_dispute_alert); an
    opening delivered after the dispute closed is ``superseded_dispute``.

    Locks: PAYMENT_DISPUTE(dispute), after the event's row: one dispute's events are judged one at a
    time, so an opening delivered as its close commits reads the close (else both would alert).
    """
    advisory_xact_lock(LockNamespace.PAYMENT_DISPUTE, event.dispute_id or "")
    if event.type == DISPUTE_CREATED:
        # Stripe keeps no order, and retries a failed delivery for days: an opening that comes after the
        # dispute closed asks for evidence on a decided dispute. It is recorded, told to no one.
        closed = PaymentEvent.objects.filter(
            type=DISPUTE_CLOSED, payload__data__object__id=event.dispute_id, processed_at__isnull=False
        )
        result = "superseded_dispute" if closed.exists() else "dispute_opened"
    elif event.type == DISPUTE_CLOSED:
        result = {"won": "dispute_won", "lost": "dispute_lost"}.get(event.dispute_status, "dispute_closed")
    else:
        result = "dispute_" + event.type.rsplit(".", 1)[1]  # dispute_updated, dispute_funds_withdrawn, …
    if result in DISPUTE_ALERTS:
        notifications.owe_dispute_alert(checkout.booking_id, event, result=result)
    return result


# The dispute results the operators are told of; the ones they must act on are flagged for review.
DISPUTE_ALERTS = ("dispute_opened", "dispute_won", "dispute_lost", "dispute_closed")
DISPUTE_REVIEW = ("dispute_opened", "dispute_lost", "unknown_dispute")


def receive_payment_event(payload: bytes, signature: str | None, *, provider_name=None):
    """Verify, store once and process once a provider event; refund after commit if owed.

    The event row is inserted (or, for a repeat, locked) first. A checkout event then
    takes, through ``Booking.objects.lock_settlement``, BOOKING_PACKAGE (shared),
    BOOKING_DATE(package, date), the booking row and the checkout row (the order of
    every path), and is matched against the *locked* checkout (``match_event``): an
    event for another session, amount or currency, or for no checkout of ours while
    claiming money, is stored with ``needs_review`` and changes nothing. A matched event:

    - ``completed`` + ``paid``/``no_payment_required``, ``async_payment_succeeded``:
      confirm_payment (confirmed, or refund_pending with its refund claimed);
    - ``completed`` + ``unpaid``: await_payment (the place kept, ``payment_pending``);
    - ``async_payment_failed``: the place released, the checkout ``payment_failed``;
    - ``expired``: a hold released, the checkout ``expired``.

    A refund event (``refund.updated``, ``refund.failed``) takes the same locks and is matched
    by ``match_refund``; ``record_refund`` moves the refund as far as the provider says it went.
    A dispute event (``charge.dispute.*``) is matched to the checkout of the payment it disputes
    (``match_dispute``) and recorded against its booking, which it does not change; an opened or
    lost dispute (or one of a payment not ours) is flagged for review, and the operators are told.

    Raises InvalidSignature or MalformedEvent before anything is stored.
    """
    verify_signature(payload, signature)
    return process_payment_event(parse_event(payload), provider_name=provider_name)


def process_payment_event(event, *, provider_name=None):
    """Store once and process once a verified provider event (``receive_payment_event``, whose docstring says
    how), or one a look-up stands for (``reconcile_checkouts``); refund after commit if owed."""
    refund_owed = False
    # the history of what this event changes names it (core/history.py)
    with database_refusals(), pghistory.context(provider_event=event.id), transaction.atomic():
        event_pk, processed = PaymentEvent.objects.receive(
            provider=provider_name or get_provider().name, event_id=event.id, type=event.type, payload=event.payload
        )
        if processed:
            stored = PaymentEvent.objects.filter(pk=event_pk).values("result", "booking_id").get()
            return WebhookResult(event.id, True, stored["result"], stored["booking_id"])
        refund_event, dispute_event = event.type in REFUND_EVENTS, event.type in DISPUTE_EVENTS
        if refund_event:
            checkout, result = _refund_candidate(event)
        elif dispute_event:
            checkout, result = _dispute_candidate(event)
        else:
            checkout, result = _candidate(event) if event.type in HANDLED else (None, "ignored_type")
        booking_id = checkout.booking_id if checkout else None
        if checkout is not None and dispute_event:  # changes no row of the booking: only the dispute's lock
            result = match_dispute(event, checkout) or _note_dispute(event, checkout)
        elif checkout is not None:
            checkout = Booking.objects.lock_settlement(checkout.booking_id, checkout_id=checkout.pk)
            if refund_event:
                result = match_refund(event, checkout) or _settle_refund(event, checkout)
            else:
                result = match_event(event, checkout)
                if not result:
                    result, refund_owed = _settle(event, checkout)
        review = (
            result.startswith("mismatch_")
            or result in ("unexpected_payment_status", "unrequested_refund", *DISPUTE_REVIEW)
            or (result == "unknown_checkout" and _claims_money(event))
        )
        if review:
            logger.warning("payment event %s (%s) needs review: %s", event.id, event.type, result)
        PaymentEvent.objects.mark_processed(event_pk, result=result, booking_id=booking_id, needs_review=review)
    if refund_owed:
        refund_booking(booking_id)
    return WebhookResult(event.id, False, result, booking_id)


def sandbox_deliver_refund(checkout, *, status, **event):
    """Build, sign and deliver a sandbox refund event (``build_refund_event``) through the webhook's path."""
    payload, signature = build_refund_event(checkout, status=status, **event)
    return receive_payment_event(payload, signature, provider_name="sandbox")


def sandbox_deliver(checkout, event_type, *, payment_status=None):
    """Build, sign and deliver a sandbox event through the same path as the webhook endpoint (the sandbox's
    account remembers how the session ended first, as Stripe's does whatever reaches the webhook)."""
    from bookings.payments.sandbox import SandboxProvider, build_event

    if event_type in (COMPLETED, EXPIRED, ASYNC_SUCCEEDED, ASYNC_FAILED):
        SandboxProvider.session_ended(checkout, event_type, payment_status)
    payload, signature = build_event(checkout, event_type, payment_status=payment_status)
    return receive_payment_event(payload, signature, provider_name="sandbox")
