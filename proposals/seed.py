"""Demo data for this app, called by ``manage.py seed_demo`` inside its transaction. Must be idempotent."""

from datetime import timedelta

from bookings.models import Package
from core.guards import database_clock
from proposals.models import Proposal

DEMO_SESSION = "demo-chat-session"


def seed_demo(tenant, *, admin, api_user):
    """Ensure tenant ``demo`` has one live pending proposal in the demo chat session."""
    package = Package.objects.for_tenant(tenant).active().order_by("-daily_capacity", "pk").first()
    if package is None or Proposal.objects.filter(tenant=tenant, session_id=DEMO_SESSION).live().exists():
        return
    Proposal.objects.propose(
        tenant=tenant,
        session_id=DEMO_SESSION,
        package=package,
        date=(database_clock() + timedelta(days=30)).date(),
        customer_name="Demo Customer",
        customer_email="customer@example.com",
        expires_in=timedelta(days=7),
    )
