"""Confirming a proposal books through the bookings domain: proposal and hold in one transaction.

Lock order (the global one): the proposal row (the filtered UPDATE in ``confirm``), then
BOOKING_PACKAGE(package) shared and BOOKING_DATE(package, date), taken by
``Booking.objects.hold``, then the new booking and checkout rows. The provider checkout
is created after commit, exactly as for the public checkout.
"""

import contextlib
import functools

from django.db import transaction

from bookings.exceptions import DateInPast, DateUnavailable, PackageNotFound, PaymentProviderUnavailable
from bookings.services import create_provider_checkout, hold_in_transaction, resume_checkout
from core.guards import database_refusals
from proposals.models import Proposal

# Refusals that end the proposal as ``failed``; anything else (a lock timeout,
# a database error) rolls the whole confirmation back and leaves it pending.
BOOKING_REFUSALS = (DateUnavailable, PackageNotFound, DateInPast)


def confirm_proposal(proposal_id, *, tenant, session_id, note=None):
    """Confirm the proposal and execute its booking exactly once; then open the provider checkout.

    One transaction: the filtered UPDATE pending -> confirmed decides the winner,
    then the booking hold (capacity honoured under the date's advisory lock). The hold
    refuses (BOOKING_REFUSALS) before it writes anything, so no savepoint is needed to
    go on: the proposal becomes ``failed`` with the refusal's code, that commits, and
    the refusal is re-raised (``date_unavailable`` -> 409). Any other error (a database
    refusal, a lock timeout) rolls the whole transaction back. On success the proposal is ``executed``
    with its booking, written by the statement that makes the booking (``Proposal.objects.execute``).
    Returns (proposal, booking) with ``booking.checkout`` open.
    Should the provider then refuse, or answer only after the hold ended (lapsed, or
    released or cancelled meanwhile: the checkout is closed unopened), the answer is 503
    ``payment_provider_unavailable`` and the proposal is reopened (``pending``, no booking),
    so a retry can succeed. ``note(booking_id)``, when given, runs in the transaction that books
    (an Idempotency-Key's ``note_work``).
    The reopen is scoped to *this* booking: should a sweep have reopened the proposal and
    a new confirmation have executed it meanwhile, the late reopen matches nothing.

    Locks: proposal row -> BOOKING_PACKAGE(package) shared -> BOOKING_DATE(package, date)
    (the hold) -> new booking and checkout rows; after commit, on a provider refusal:
    booking row -> checkout row (release), then proposal row -> booking row -> checkout row (reopen).
    """
    refusal = None
    with database_refusals(), transaction.atomic():
        proposal = Proposal.objects.confirm(proposal_id, tenant=tenant, session_id=session_id)
        hold = functools.partial(
            hold_in_transaction,
            tenant=tenant,
            package_id=proposal.package_id,
            date=proposal.date,
            customer_name=proposal.customer_name,
            customer_email=proposal.customer_email,
        )
        try:
            proposal, booking = Proposal.objects.execute(proposal.pk, hold=hold)
        except BOOKING_REFUSALS as exc:
            Proposal.objects.fail(proposal.pk, code=exc.code)
            refusal = exc
        else:
            if note is not None:
                note(booking.pk)
    if refusal is not None:
        raise refusal
    with _reopened_if_the_provider_refuses(proposal.pk, booking.pk):
        create_provider_checkout(booking)
    proposal.booking = booking
    return proposal, booking


def resume_confirmation(proposal_id, booking_id):
    """The proposal and booking of a confirmation whose request died before it answered, the booking's
    provider checkout opened first where that request booked but never opened it (as ``resume_checkout``;
    should the provider refuse, the proposal is reopened, as a confirmation's would be).
    Returns (proposal, booking) as ``confirm_proposal``; or None when that confirmation was undone (the
    proposal reopened, its hold released: the request's answer was a 503), so a retry confirms anew."""
    if not Proposal.objects.filter(pk=proposal_id, booking_id=booking_id).exists():
        return None
    with _reopened_if_the_provider_refuses(proposal_id, booking_id):
        booking = resume_checkout(booking_id)
    if booking is None:
        return None
    proposal = Proposal.objects.with_effective_status().get(pk=proposal_id)
    proposal.booking = booking
    return proposal, booking


@contextlib.contextmanager
def _reopened_if_the_provider_refuses(proposal_id, booking_id):
    """Around the provider call of a confirmation (first or resumed): on a refusal the hold is released and
    nothing was charged, so the proposal goes back to pending and "try again" (the 503's advice) can work."""
    try:
        yield
    except PaymentProviderUnavailable:
        Proposal.objects.reopen(proposal_id, booking_id=booking_id)
        raise


def reject_proposal(proposal_id, *, tenant, session_id):
    """Reject the proposal exactly once (no call-out: a thin wrapper kept for symmetry with confirm).

    Locks: proposal row.
    """
    with database_refusals():
        return Proposal.objects.reject(proposal_id, tenant=tenant, session_id=session_id)
