"""Scenario: a double-clicked Confirm, many times over, on one proposal (target t: proposal first_id + t)."""

from datetime import timedelta
from decimal import Decimal

from django.db.models.functions import Now

from bookings.models import Package
from bookings.race_scenarios import naive_hold
from bookings.services import create_provider_checkout
from core.guards import database_clock
from core.race_demo import Scenario, scenario
from proposals.exceptions import ProposalAlreadyProcessed
from proposals.models import Proposal
from proposals.services import confirm_proposal

CHAT = "chat-bench"


@scenario
class ProposalConfirm(Scenario):
    """``proposals.services.confirm_proposal``: proposal first_id + t, pending, for the date of its own."""

    name = "proposal confirm"
    attempts = 30
    expected_winners = 1
    backstops = (
        "proposals.Proposal:proposal_status_transition",
        "proposals.Proposal:proposal_booking_unlink_transition",
        "bookings.Booking:booking_within_capacity",  # the naive hold's count
    )

    def create_target(self, package, day):
        """Proposal target 0 (id ``first_id`` when given), pending for ``day``, in the chat ``CHAT``."""
        proposal = Proposal.objects.create(
            id=self.first_id,
            tenant=self.tenant,
            session_id=CHAT,
            package=package,
            date=day,
            customer_name="c",
            customer_email="c@example.com",
            status=Proposal.Status.PENDING,
            expires_at=Now() + timedelta(days=1),
            created_at=Now(),
        )
        self.first_id = proposal.pk
        return proposal

    def prepare(self):
        # Room for many bookings, so a double execution shows as extra bookings, not as a full date.
        package = Package.objects.create(
            tenant=self.tenant, name="Race demo tour", price=Decimal("80.00"), currency="USD", daily_capacity=100
        )
        self.create_target(package, database_clock().date() + timedelta(days=20))

    def guarded(self, t, k):
        return confirm_proposal(self.first_id + t, tenant=self.tenant, session_id=CHAT)

    def check_then_act(self, t, k):
        """Read ``pending``, hold the booking, then walk the machine's own path (pending -> confirmed -> executed)."""
        live = Proposal.objects.live().filter(tenant=self.tenant, session_id=CHAT)
        proposal = live.filter(pk=self.first_id + t).first()
        if proposal is None:
            raise ProposalAlreadyProcessed()
        package = Package.objects.get(pk=proposal.package_id)
        booking = naive_hold(self.tenant, package, proposal.date, k, pause=self.pause, origin_proposal_id=proposal.pk)
        # It writes the row as it read it (no booking yet), confirmed, then executed with its booking.
        proposals = Proposal.objects.filter(pk=proposal.pk)
        proposals.update(status=Proposal.Status.CONFIRMED, booking=None, confirmed_at=Now())
        proposals.update(status=Proposal.Status.EXECUTED, booking=booking, executed_at=Now())
        return booking

    def after_commit(self, booking):
        create_provider_checkout(booking)
