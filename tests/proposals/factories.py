from contextlib import contextmanager
from datetime import timedelta

from django.db import connection

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


def executed_proposal(tenant, *, package=None, day=None, session_id="chat-1", **kwargs):
    """A proposal confirmed through the real service: executed, its booking held, its checkout open."""
    from proposals.services import confirm_proposal

    proposal = make_proposal(tenant, package=package, day=day, session_id=session_id, **kwargs)
    proposal, booking = confirm_proposal(proposal.pk, tenant=tenant, session_id=session_id)
    return Proposal.objects.get(pk=proposal.pk), booking


@contextmanager
def user_triggers_disabled(*models):
    """Switch off the user triggers of these tables inside the test's transaction (rolled back with it).

    Only for planting a defect the database would refuse: what the invariants must still detect.
    """
    tables = [model._meta.db_table for model in models]
    _alter([f'ALTER TABLE "{table}" DISABLE TRIGGER USER' for table in tables])
    yield
    _alter([f'ALTER TABLE "{table}" ENABLE TRIGGER USER' for table in tables])


def _alter(statements):
    # ALTER TABLE refuses while deferred foreign-key checks are pending: run them now, then defer again.
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        for statement in statements:
            cursor.execute(statement)
        cursor.execute("SET CONSTRAINTS ALL DEFERRED")


def drop_constraint(model, name):
    """Drop a constraint inside the test's transaction (rolled back with it), to plant a defect it would refuse."""
    _alter([f'ALTER TABLE "{model._meta.db_table}" DROP CONSTRAINT "{name}"'])


def set_booking(booking, *, checkout=None, **changes):
    """Put a booking (and its checkout) in any state, bypassing the bookings' own guards (triggers off)."""
    from bookings.models import Booking, Checkout

    with user_triggers_disabled(Booking, Checkout):
        if changes:
            Booking.objects.filter(pk=booking.pk).update(**changes)
        if checkout:
            Checkout.objects.filter(booking_id=booking.pk).update(**checkout)
