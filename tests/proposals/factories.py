from datetime import timedelta

from proposals.models import Proposal
from tests.bookings.factories import PackageFactory, future


def make_proposal(tenant, *, package=None, day=None, session_id="chat-1", expires_in=timedelta(minutes=15), **kwargs):
    """A pending proposal whose expiry is computed by the database clock."""
    return Proposal.objects.propose(
        tenant=tenant,
        session_id=session_id,
        package=package or PackageFactory(tenant=tenant),
        date=day or future(),
        customer_name=kwargs.get("customer_name", "Ann"),
        customer_email=kwargs.get("customer_email", "ann@example.com"),
        expires_in=expires_in,
    )
