"""What must hold for proposals, recomputed from the rows (manage.py check_invariants).

A booking made from a proposal that takes a place (``bookings.managers.active_q``:
confirmed, waiting for a delayed payment, or held with an unexpired hold) must be the
one its executed proposal links. An orphan whose late payment is being refunded
(``refund_pending``, ``refunded``) takes no place and is fine: confirm_payment refunds
it rather than confirm it (the placement veto).
"""

from django.db.models import Count, F, Q

from bookings.managers import active_q
from bookings.models import Booking
from core.integrity import state_machines
from core.invariants import invariant
from proposals.models import Proposal


def _proposals(tenant):
    return Proposal.objects.all() if tenant is None else Proposal.objects.filter(tenant=tenant)


def _bookings_taking_a_place(tenant):
    bookings = Booking.objects.all() if tenant is None else Booking.objects.filter(tenant=tenant)
    return bookings.filter(active_q())


@invariant("an executed proposal links one booking of its tenant, package and date, which names it as its origin")
def executed_proposals_have_their_booking(tenant):
    broken = (
        _proposals(tenant)
        .filter(status=Proposal.Status.EXECUTED)
        .filter(
            Q(booking__isnull=True)
            | ~Q(booking__package=F("package"))
            | ~Q(booking__date=F("date"))
            | ~Q(booking__tenant=F("tenant"))
            | Q(booking__origin_proposal_id__isnull=True)
            | ~Q(booking__origin_proposal_id=F("pk"))
        )
    )
    return [f"proposal {pk}" for pk in broken.values_list("pk", flat=True)]


@invariant("only an executed proposal links a booking, and no booking is linked by two proposals")
def bookings_linked_once_and_only_when_executed(tenant):
    proposals = _proposals(tenant)
    not_executed = proposals.filter(booking__isnull=False).exclude(status=Proposal.Status.EXECUTED)
    shared = proposals.filter(booking__isnull=False).values("booking_id").annotate(n=Count("pk")).filter(n__gt=1)
    return [f"proposal {pk}: {status} with a booking" for pk, status in not_executed.values_list("pk", "status")] + [
        f"booking {row['booking_id']}: linked by {row['n']} proposals" for row in shared
    ]


@invariant("a booking made from a proposal that takes a place is the booking its executed proposal links")
def no_live_booking_behind_a_proposal_that_does_not_link_it(tenant):
    linking = Proposal.objects.filter(status=Proposal.Status.EXECUTED, booking__isnull=False).values("booking_id")
    orphans = _bookings_taking_a_place(tenant).filter(origin_proposal_id__isnull=False).exclude(pk__in=linking)
    return [
        f"booking {pk} ({status}) from proposal {origin}: that proposal does not link it"
        for pk, status, origin in orphans.values_list("pk", "status", "origin_proposal_id")
    ]


@invariant("every proposal's status is a state of its machine")
def statuses_inside_the_machine(tenant):
    (machine,) = state_machines(Proposal)
    outside = _proposals(tenant).exclude(status__in=sorted(machine.states))
    return [f"proposal {pk}: status {status!r}" for pk, status in outside.values_list("pk", "status")]
