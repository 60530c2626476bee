"""What must hold for proposals, recomputed from the rows (manage.py check_invariants)."""

from django.db.models import F, Q

from core.invariants import invariant
from proposals.models import Proposal


@invariant("an executed proposal has exactly its own booking (same tenant, package and date); no other has one")
def executed_proposals_have_their_booking(tenant):
    proposals = Proposal.objects.all() if tenant is None else Proposal.objects.filter(tenant=tenant)
    broken = proposals.filter(
        Q(status=Proposal.Status.EXECUTED, booking__isnull=True)
        | Q(booking__isnull=False) & ~Q(status=Proposal.Status.EXECUTED)
        | Q(booking__isnull=False) & ~Q(booking__package=F("package"))
        | Q(booking__isnull=False) & ~Q(booking__date=F("date"))
        | Q(booking__isnull=False) & ~Q(booking__tenant=F("tenant"))
    )
    return [f"proposal {pk}" for pk in broken.values_list("pk", flat=True)]
