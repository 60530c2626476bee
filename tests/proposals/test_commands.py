from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.db.models.functions import Now

from bookings.models import Booking
from bookings.payments.sandbox import SandboxProvider
from proposals.models import Proposal
from proposals.seed import DEMO_SESSION, seed_demo
from proposals.services import confirm_proposal
from tests.bookings.factories import PackageFactory
from tests.factories import TenantFactory
from tests.proposals.factories import make_proposal
from tests.races import row_locked


def test_sweep_proposals_command(tenant):
    live, lapsed = make_proposal(tenant), make_proposal(tenant)
    Proposal.objects.filter(pk=lapsed.pk).update(expires_at=Now() - timedelta(seconds=1))
    out = StringIO()
    call_command("sweep_proposals", stdout=out)
    assert out.getvalue().splitlines() == ["Reopened stranded proposals: 0", "Expired proposals: 1"]
    assert Proposal.objects.get(pk=live.pk).status == "pending"


def test_expire_proposals_is_a_deprecated_name_of_sweep_proposals(tenant):
    lapsed = make_proposal(tenant)
    Proposal.objects.filter(pk=lapsed.pk).update(expires_at=Now() - timedelta(seconds=1))
    out, err = StringIO(), StringIO()
    call_command("expire_proposals", stdout=out, stderr=err)
    assert err.getvalue() == "expire_proposals is deprecated: run sweep_proposals (the same sweep).\n"
    assert out.getvalue().splitlines() == ["Reopened stranded proposals: 0", "Expired proposals: 1"]
    assert Proposal.objects.get(pk=lapsed.pk).status == "expired"


def test_seed_adds_one_pending_proposal_idempotently(tenant):
    PackageFactory(tenant=tenant, daily_capacity=3)
    seed_demo(tenant, admin=None, api_user=None)
    seed_demo(tenant, admin=None, api_user=None)
    proposal = Proposal.objects.get()
    assert (proposal.session_id, proposal.status) == (DEMO_SESSION, "pending")


def test_a_proposal_stranded_by_a_crash_before_the_provider_answered_is_reopened(tenant, settings, recording_provider):
    """Regression: a process dying between the confirm commit and the provider call left the proposal
    ``executed`` with a booking whose checkout never opened; every retry said proposal_already_processed."""
    from bookings.models import Booking
    from proposals.services import confirm_proposal

    proposal = make_proposal(tenant)
    settings.PAYMENT_PROVIDER = "tests.proposals.test_commands.DyingProvider"
    with pytest.raises(RuntimeError):
        confirm_proposal(proposal.pk, tenant=tenant, session_id="chat-1")
    stranded = Proposal.objects.get(pk=proposal.pk)
    assert stranded.status == "executed" and stranded.booking.checkout.state == "creating"
    out = StringIO()
    call_command("sweep_proposals", stdout=out)
    assert "Reopened stranded proposals: 0" in out.getvalue()  # the hold is live: the caller may still answer
    Booking.objects.filter(pk=stranded.booking_id).update(hold_expires_at=Now() - timedelta(seconds=1))
    out = StringIO()
    call_command("sweep_proposals", stdout=out)
    assert "Reopened stranded proposals: 1" in out.getvalue()
    reopened = Proposal.objects.get(pk=proposal.pk)
    assert (reopened.status, reopened.booking_id) == ("pending", None)
    settings.PAYMENT_PROVIDER = "tests.bookings.providers.RecordingProvider"
    _, booking = confirm_proposal(proposal.pk, tenant=tenant, session_id="chat-1")
    assert booking.checkout.state == "open" and Proposal.objects.get(pk=proposal.pk).booking_id == booking.pk


class DyingProvider(SandboxProvider):
    """The process dies inside create_checkout (not a ProviderError: nothing is recorded)."""

    def create_checkout(self, booking, checkout):
        raise RuntimeError("process died")


@pytest.mark.django_db(transaction=True)
def test_a_stranded_proposal_busy_past_lock_timeout_is_left_for_the_next_run_with_exit_3(settings):
    """The sweep does every other row, reports the busy one and exits 3 (run again shortly), never a traceback."""
    tenant = TenantFactory(slug="acme")
    settings.PAYMENT_PROVIDER = "tests.proposals.providers.DyingProvider"
    stranded = []
    for session in ("chat-1", "chat-2"):
        proposal = make_proposal(tenant, session_id=session)
        with pytest.raises(RuntimeError):
            confirm_proposal(proposal.pk, tenant=tenant, session_id=session)
        stranded.append(Proposal.objects.get(pk=proposal.pk))
    Booking.objects.update(hold_expires_at=Now() - timedelta(seconds=1))
    busy, free = stranded
    out, err = StringIO(), StringIO()
    with row_locked(Proposal.objects.filter(pk=busy.pk)), pytest.raises(SystemExit) as exited:
        call_command("sweep_proposals", stdout=out, stderr=err)
    assert exited.value.code == 3
    assert "Reopened stranded proposals: 1" in out.getvalue()
    assert f"Proposal #{busy.pk} left for the next run: resource_locked" in err.getvalue()
    assert Proposal.objects.get(pk=free.pk).status == "pending"
    assert Proposal.objects.get(pk=busy.pk).status == "executed"


@pytest.mark.django_db(transaction=True)
def test_a_lapsed_proposal_another_transaction_holds_is_left_for_the_next_run_and_the_others_expire():
    """The expiry skips a row a confirm holds, never waiting for it: the other lapsed proposals expire now, that
    one in the next run. Regression: the one UPDATE waited for it, and past lock_timeout expired nothing, every
    run, while the row stayed held."""
    tenant = TenantFactory(slug="acme")
    held, other = make_proposal(tenant, session_id="chat-9"), make_proposal(tenant, session_id="chat-8")
    Proposal.objects.filter(pk__in=[held.pk, other.pk]).update(expires_at=Now() - timedelta(seconds=1))
    out, err = StringIO(), StringIO()
    with row_locked(Proposal.objects.filter(pk=held.pk)):
        call_command("sweep_proposals", stdout=out, stderr=err)
    assert "Reopened stranded proposals: 0" in out.getvalue() and "Expired proposals: 1" in out.getvalue()
    assert Proposal.objects.get(pk=held.pk).status == "pending"  # the next run's (it reads as expired already)
    assert Proposal.objects.get(pk=other.pk).status == "expired"
