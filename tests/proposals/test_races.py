"""Concurrent confirms and rejects, each on its own connection, lined up on a barrier."""

import random
import threading
import time
from datetime import timedelta

import pytest
from django.db.models.functions import Now

from bookings.models import Booking
from core.guards import constraint_name
from proposals.models import Proposal
from proposals.race_scenarios import ProposalConfirm
from proposals.services import confirm_proposal, reject_proposal
from tests.bookings.factories import PackageFactory, future
from tests.factories import TenantFactory
from tests.proposals.factories import make_proposal
from tests.races import run_concurrently, tally

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def tenant():
    return TenantFactory(slug="acme")


def test_50_concurrent_confirms_execute_exactly_once(tenant, recording_provider):
    package = PackageFactory(tenant=tenant, daily_capacity=50)  # capacity is no limit here: only the guard is
    proposal = make_proposal(tenant, package=package)
    outcomes = run_concurrently(lambda i: confirm_proposal(proposal.pk, tenant=tenant, session_id="chat-1")[1].pk, 50)
    assert tally(outcomes) == {"ok": 1, "proposal_already_processed": 49}
    stored = Proposal.objects.get(pk=proposal.pk)
    winner = next(o.value for o in outcomes if o.ok)
    assert (stored.status, stored.booking_id) == ("executed", winner)
    assert list(Booking.objects.values_list("pk", flat=True)) == [winner]
    assert recording_provider.checkouts == [winner]


def naive_storm(tenant, *, keep=()):
    """50 naive confirms (the race scenario's check-then-act) of one proposal, on a date with room for all."""
    confirms = ProposalConfirm(tenant, window=0.05)
    proposal = confirms.create_target(PackageFactory(tenant=tenant, daily_capacity=50), future())
    outcomes = run_concurrently(lambda i: confirms.naive(0, i, keep=keep).pk, 50)
    return proposal, outcomes


@pytest.mark.control("proposal confirm")
def test_naive_read_check_update_executes_more_than_once(tenant):
    _proposal, outcomes = naive_storm(tenant)
    assert tally(outcomes)["ok"] > 1, [repr(o.error) for o in outcomes][:2]
    assert Booking.objects.count() > 1  # one proposal, several bookings: the race is real


def test_the_state_machine_alone_refuses_the_naive_double_execution(tenant):
    """The same naive storm with the database's state machine on: one execution, every other one refused."""
    proposal, outcomes = naive_storm(tenant, keep=["proposals.Proposal:proposal_status_transition"])
    codes = tally(outcomes)
    assert codes["ok"] == 1, codes
    refused = [o.error for o in outcomes if not o.ok and o.code != "proposal_already_processed"]
    assert refused, codes  # the storm did reach the database with a stale "pending"
    assert all(constraint_name(error) == "proposal_status_transition" for error in refused), refused[:1]
    assert Proposal.objects.get(pk=proposal.pk).booking_id == next(o.value for o in outcomes if o.ok)
    # The losers' holds rolled back with their transactions: only the winner's booking exists.
    assert list(Booking.objects.values_list("pk", flat=True)) == [next(o.value for o in outcomes if o.ok)]


def test_confirm_and_reject_racing_exactly_one_wins(tenant, recording_provider):
    package = PackageFactory(tenant=tenant, daily_capacity=20)
    proposals = [make_proposal(tenant, package=package) for _ in range(10)]

    def attempt(i):
        proposal = proposals[i // 2]
        if i % 2:
            return reject_proposal(proposal.pk, tenant=tenant, session_id="chat-1").status
        return confirm_proposal(proposal.pk, tenant=tenant, session_id="chat-1")[0].status

    outcomes = run_concurrently(attempt, 20)
    for n, proposal in enumerate(proposals):
        pair = outcomes[2 * n : 2 * n + 2]
        assert sorted(o.code for o in pair) == ["ok", "proposal_already_processed"]
        winner = next(o.value for o in pair if o.ok)
        stored = Proposal.objects.get(pk=proposal.pk)
        assert stored.status == winner
        assert (stored.booking_id is not None) == (winner == "executed")
    assert Booking.objects.count() == Proposal.objects.filter(status="executed").count()


def test_confirm_racing_its_own_expiry(tenant, recording_provider):
    """Expiry 200 ms ahead by the database clock, confirms spread around it: executed or expired, never both."""
    package = PackageFactory(tenant=tenant, daily_capacity=100)
    proposals = [make_proposal(tenant, package=package, day=future(30 + n)) for n in range(15)]
    # Pairs 0-2 go at once (well before expiry), pairs 12-14 well after it, the rest anywhere around it.
    delays = [0.0] * 6 + [random.uniform(0.1, 0.3) for _ in range(18)] + [0.5] * 6
    clock_set = threading.Event()

    def attempt(i):
        if i == 0:  # start the clock once everyone is connected and lined up
            Proposal.objects.update(expires_at=Now() + timedelta(milliseconds=200))
            clock_set.set()
        clock_set.wait(5)
        time.sleep(delays[i])
        return confirm_proposal(proposals[i // 2].pk, tenant=tenant, session_id="chat-1")[1].pk

    outcomes = run_concurrently(attempt, 30)
    counts = tally(outcomes)
    assert set(counts) <= {"ok", "proposal_expired", "proposal_already_processed"}, counts
    for n, proposal in enumerate(proposals):
        stored = Proposal.objects.get(pk=proposal.pk)
        codes = sorted(o.code for o in outcomes[2 * n : 2 * n + 2])
        if stored.status == "executed":
            assert codes[0] == "ok" and codes[1] in ("proposal_already_processed", "proposal_expired"), codes
            assert stored.booking_id is not None and stored.confirmed_at < stored.expires_at
        else:
            assert stored.status == "pending" and stored.booking_id is None
            assert codes == ["proposal_expired", "proposal_expired"]
    executed = Proposal.objects.filter(status="executed")
    assert Booking.objects.count() == executed.count() == counts["ok"]
    assert not Booking.objects.exclude(proposal__in=executed).exists()  # no booking for an expired proposal
    assert 0 < counts["ok"] < 15  # both sides of the deadline were exercised


def test_two_proposals_for_one_capacity_1_date_one_executes_one_fails(tenant, recording_provider):
    package = PackageFactory(tenant=tenant, daily_capacity=1)
    day = future()
    first = make_proposal(tenant, package=package, day=day, session_id="chat-1")
    second = make_proposal(tenant, package=package, day=day, session_id="chat-2")
    pair = [(first, "chat-1"), (second, "chat-2")]
    outcomes = run_concurrently(
        lambda i: confirm_proposal(pair[i][0].pk, tenant=tenant, session_id=pair[i][1])[1].pk, 2
    )
    assert tally(outcomes) == {"ok": 1, "date_unavailable": 1}
    statuses = sorted(Proposal.objects.values_list("status", "failure_code"))
    assert statuses == [("executed", ""), ("failed", "date_unavailable")]
    assert Booking.objects.count() == 1
