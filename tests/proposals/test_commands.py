from datetime import timedelta
from io import StringIO

from django.core.management import call_command
from django.db.models.functions import Now

from proposals.models import Proposal
from proposals.seed import DEMO_SESSION, seed_demo
from tests.bookings.factories import PackageFactory
from tests.proposals.factories import make_proposal


def test_expire_proposals_command(tenant):
    live, lapsed = make_proposal(tenant), make_proposal(tenant)
    Proposal.objects.filter(pk=lapsed.pk).update(expires_at=Now() - timedelta(seconds=1))
    out = StringIO()
    call_command("expire_proposals", stdout=out)
    assert out.getvalue().strip() == "Expired proposals: 1"
    assert Proposal.objects.get(pk=live.pk).status == "pending"


def test_seed_adds_one_pending_proposal_idempotently(tenant):
    PackageFactory(tenant=tenant, daily_capacity=3)
    seed_demo(tenant, admin=None, api_user=None)
    seed_demo(tenant, admin=None, api_user=None)
    proposal = Proposal.objects.get()
    assert (proposal.session_id, proposal.status) == (DEMO_SESSION, "pending")
