"""race_demo: a double-clicked Confirm, thirty times over, on one proposal."""

from datetime import timedelta
from decimal import Decimal

import pgtrigger
from django.db import transaction
from django.db.models.functions import Now

from bookings.models import Package
from bookings.services import hold_in_transaction
from core.guards import database_clock
from core.race_demo import naive_pause, scenario
from proposals.exceptions import ProposalAlreadyProcessed
from proposals.models import Proposal
from proposals.services import confirm_proposal

CHAT = "race-demo-chat"
NAIVE_IGNORES = (
    "proposals.Proposal:proposal_status_transition",
    "proposals.Proposal:proposal_booking_unlink_transition",
)


@scenario
class ProposalConfirm:
    name = "proposal confirm"
    attempts = 30
    expected_winners = 1

    def __init__(self, tenant):
        self.tenant = tenant
        # Room for many bookings, so a double execution shows as extra bookings, not as a full date.
        package = Package.objects.create(
            tenant=tenant, name="Race demo tour", price=Decimal("80.00"), currency="USD", daily_capacity=100
        )
        self.proposal = Proposal.objects.propose(
            tenant=tenant,
            session_id=CHAT,
            package=package,
            date=database_clock().date() + timedelta(days=20),
            customer_name="Chat customer",
            customer_email="chat@example.com",
            expires_in=timedelta(minutes=10),
        )

    def guarded(self, i):
        return confirm_proposal(self.proposal.pk, tenant=self.tenant, session_id=CHAT)

    def naive(self, i):
        # The database's own guards (the state machine and the unlink trigger) would refuse the
        # second execution: switched off for this connection, to show what the check-then-act does.
        with pgtrigger.ignore(*NAIVE_IGNORES):
            return self._naive(i)

    def _naive(self, i):
        proposal = Proposal.objects.get(pk=self.proposal.pk)
        if proposal.status != Proposal.Status.PENDING:
            raise ProposalAlreadyProcessed()
        naive_pause()
        with transaction.atomic():
            booking = hold_in_transaction(
                tenant=self.tenant,
                package_id=proposal.package_id,
                date=proposal.date,
                customer_name=proposal.customer_name,
                customer_email=proposal.customer_email,
            )
            Proposal.objects.filter(pk=proposal.pk).update(
                status=Proposal.Status.EXECUTED, booking=booking, confirmed_at=Now(), executed_at=Now()
            )
        return booking
