import functools
from datetime import timedelta

import pytest
from django.db import IntegrityError, connection, transaction
from django.db.models.functions import Now
from django.test.utils import CaptureQueriesContext

from bookings.exceptions import DateUnavailable, PackageNotFound
from bookings.models import Booking
from bookings.services import hold_in_transaction
from proposals.exceptions import ProposalAlreadyProcessed, ProposalExpired, ProposalNotFound
from proposals.models import Proposal
from proposals.services import confirm_proposal, reject_proposal
from tests.bookings.factories import PackageFactory
from tests.proposals.factories import make_proposal


def lapse(proposal):
    Proposal.objects.filter(pk=proposal.pk).update(expires_at=Now() - timedelta(seconds=1))


def test_confirm_executes_the_booking_once(tenant, recording_provider):
    proposal = make_proposal(tenant)
    confirmed, booking = confirm_proposal(proposal.pk, tenant=tenant, session_id="chat-1")
    stored = Proposal.objects.get(pk=proposal.pk)
    assert (stored.status, stored.booking_id) == ("executed", booking.pk)
    assert stored.confirmed_at and stored.executed_at
    assert booking.status == "held" and booking.checkout.state == "open"
    assert recording_provider.checkouts == [booking.pk]
    with pytest.raises(ProposalAlreadyProcessed):
        confirm_proposal(proposal.pk, tenant=tenant, session_id="chat-1")
    assert Booking.objects.count() == 1


def test_confirm_answers_with_the_executed_row_as_stored(tenant, recording_provider):
    proposal = make_proposal(tenant)
    confirmed, booking = confirm_proposal(proposal.pk, tenant=tenant, session_id="chat-1")
    stored = Proposal.objects.get(pk=proposal.pk)
    assert (confirmed.status, confirmed.booking_id, confirmed.version) == ("executed", booking.pk, stored.version)
    assert (confirmed.confirmed_at, confirmed.executed_at) == (stored.confirmed_at, stored.executed_at)
    assert stored.confirmed_at <= stored.executed_at


def test_only_a_confirmed_proposal_is_executed(tenant, recording_provider):
    """The execution is a write of the hold's own statement: on a proposal that is not confirmed it
    matches nothing, the caller is refused and the booking that statement made rolls back with it."""
    pending = make_proposal(tenant)
    executed, _booking = confirm_proposal(make_proposal(tenant).pk, tenant=tenant, session_id="chat-1")
    bookings = Booking.objects.count()
    for proposal in (pending, executed):
        before = Proposal.objects.filter(pk=proposal.pk).values().get()
        hold = functools.partial(
            hold_in_transaction,
            tenant=tenant,
            package_id=proposal.package_id,
            date=proposal.date + timedelta(days=1),
            customer_name="c",
            customer_email="c@example.com",
        )
        with pytest.raises(ProposalAlreadyProcessed), transaction.atomic():
            Proposal.objects.execute(proposal.pk, hold=hold)
        assert Proposal.objects.filter(pk=proposal.pk).values().get() == before
    assert Booking.objects.count() == bookings


def test_confirm_refusals_name_the_reason(tenant, other_tenant):
    proposal = make_proposal(tenant)
    for kwargs in ({"tenant": other_tenant, "session_id": "chat-1"}, {"tenant": tenant, "session_id": "chat-2"}):
        with pytest.raises(ProposalNotFound):
            Proposal.objects.confirm(proposal.pk, **kwargs)
    with pytest.raises(ProposalNotFound):
        Proposal.objects.confirm(10**12, tenant=tenant, session_id="chat-1")
    lapse(proposal)
    with pytest.raises(ProposalExpired):
        Proposal.objects.confirm(proposal.pk, tenant=tenant, session_id="chat-1")
    assert Proposal.objects.get(pk=proposal.pk).status == "pending"  # refusals change nothing
    Proposal.objects.expire_due()
    with pytest.raises(ProposalExpired):
        Proposal.objects.reject(proposal.pk, tenant=tenant, session_id="chat-1")


def test_reject_then_confirm_is_already_processed(tenant):
    proposal = make_proposal(tenant)
    assert reject_proposal(proposal.pk, tenant=tenant, session_id="chat-1").status == "rejected"
    with pytest.raises(ProposalAlreadyProcessed):
        confirm_proposal(proposal.pk, tenant=tenant, session_id="chat-1")
    assert not Booking.objects.exists()


def test_full_date_fails_the_proposal_and_commits_that(tenant):
    package = PackageFactory(tenant=tenant, daily_capacity=1)
    first, second = make_proposal(tenant, package=package), make_proposal(tenant, package=package, session_id="chat-2")
    confirm_proposal(first.pk, tenant=tenant, session_id="chat-1")
    with pytest.raises(DateUnavailable):
        confirm_proposal(second.pk, tenant=tenant, session_id="chat-2")
    failed = Proposal.objects.get(pk=second.pk)
    assert (failed.status, failed.failure_code, failed.booking_id) == ("failed", "date_unavailable", None)
    assert Booking.objects.count() == 1


def test_inactive_package_fails_with_its_code(tenant):
    proposal = make_proposal(tenant)
    proposal.package.__class__.objects.filter(pk=proposal.package_id).update(is_active=False)
    with pytest.raises(PackageNotFound):
        confirm_proposal(proposal.pk, tenant=tenant, session_id="chat-1")
    assert Proposal.objects.get(pk=proposal.pk).failure_code == "package_not_found"


def test_lazy_expiry_and_the_sweep(tenant):
    live, lapsed = make_proposal(tenant), make_proposal(tenant)
    lapse(lapsed)
    statuses = dict(Proposal.objects.with_effective_status().values_list("pk", "effective_status"))
    assert statuses == {live.pk: "pending", lapsed.pk: "expired"}
    assert Proposal.objects.expire_due() == 1
    assert Proposal.objects.get(pk=lapsed.pk).status == "expired"


def test_operator_expire(tenant):
    proposal = make_proposal(tenant)
    Proposal.objects.expire(proposal.pk)
    assert Proposal.objects.get(pk=proposal.pk).status == "expired"
    with pytest.raises(ProposalAlreadyProcessed):
        Proposal.objects.expire(proposal.pk)
    with pytest.raises(ProposalNotFound):
        Proposal.objects.expire(10**12)


def test_an_operator_expiring_a_lapsed_proposal_keeps_when_it_lapsed(tenant):
    """Expiring a pending proposal whose offer already lapsed (the sweep has not reached it) records when it
    lapsed, not now: an expiry never moves later (proposal_expiry_transition refused the operator's action)."""
    proposal = make_proposal(tenant)
    lapse(proposal)
    lapsed_at = Proposal.objects.get(pk=proposal.pk).expires_at
    Proposal.objects.expire(proposal.pk)
    assert Proposal.objects.values_list("status", "expires_at").get(pk=proposal.pk) == ("expired", lapsed_at)


@pytest.mark.django_db(transaction=True)
def test_a_confirm_won_or_refused_is_one_statement_and_no_transaction():
    from tests.factories import TenantFactory

    tenant = TenantFactory(slug="acme")
    proposal = make_proposal(tenant)
    with CaptureQueriesContext(connection) as won:
        confirmed = Proposal.objects.confirm(proposal.pk, tenant=tenant, session_id="chat-1")
    statements = [q["sql"] for q in won.captured_queries]
    assert len(statements) == 1, statements  # no BEGIN/COMMIT: one statement is its own transaction
    assert statements[0].startswith("WITH locked AS (SELECT") and "FOR NO KEY UPDATE" in statements[0]
    # Expiry judged with the clock when the row is judged (after any lock wait), not the statement's start.
    assert '"expires_at" > (clock_timestamp())' in statements[0] and '"session_id" = ' in statements[0]
    assert confirmed.status == "confirmed" and confirmed.confirmed_at is not None  # the winner gets the fresh row

    with CaptureQueriesContext(connection) as refused, pytest.raises(ProposalAlreadyProcessed):
        Proposal.objects.confirm(proposal.pk, tenant=tenant, session_id="chat-1")
    assert len(refused.captured_queries) == 1, refused.captured_queries  # the refusal named by the same statement


def test_constraints_executed_needs_a_booking_and_a_booking_serves_one_proposal(tenant, recording_provider):
    proposal = make_proposal(tenant)
    with pytest.raises(IntegrityError), transaction.atomic():
        Proposal.objects.filter(pk=proposal.pk).update(status="executed", executed_at=Now(), confirmed_at=Now())
    _, booking = confirm_proposal(proposal.pk, tenant=tenant, session_id="chat-1")
    other = make_proposal(tenant, session_id="chat-2")
    with pytest.raises(IntegrityError), transaction.atomic():
        Proposal.objects.filter(pk=other.pk).update(
            status="executed", executed_at=Now(), confirmed_at=Now(), booking=booking
        )


@pytest.mark.django_db(transaction=True)
def test_confirm_proposal_round_trips(recording_provider):
    """The whole confirmation: one transaction (the decision, the hold, execute), then the provider."""
    from tests.factories import TenantFactory

    tenant = TenantFactory(slug="acme")
    proposal = make_proposal(tenant)
    with CaptureQueriesContext(connection) as queries:
        confirm_proposal(proposal.pk, tenant=tenant, session_id="chat-1")
    sql = [q["sql"] for q in queries.captured_queries]
    kinds = [s.split()[0] for s in sql]
    # confirm() is one statement (no savepoint of its own: a refused decision raises before any write);
    # the hold joins (no savepoint: it refuses before writing anything), and execute() is a write of the
    # hold's own statement. Then the provider, then Checkout.objects.open: one statement, its own
    # transaction, that opens the checkout and owes the customer's e-mail with the pay link and its job.
    assert kinds == [
        "BEGIN;",  # with confirm's statement: lock, judge, change, return the row
        "SELECT",  # the hold: the package (shared) and date locks, then the package's terms and the date's count
        "WITH",  # the booking and its checkout intent inserted, the proposal executed: link, clock, its row
        "COMMIT",
        "WITH",  # the checkout opened, the e-mail owed and queued
    ], sql
    assert sql[0].startswith("BEGIN; WITH locked AS (SELECT")
    assert "pg_advisory_xact_lock_shared" in sql[1] and "; SELECT p.tenant_id" in sql[1]
    assert sql[2].startswith('WITH "booking" AS (INSERT INTO "bookings_booking"') and '"bookings_checkout"' in sql[2]
    assert 'lockstep_then AS (UPDATE "proposals_proposal"' in sql[2]
    assert sql[4].startswith('WITH event AS (UPDATE "bookings_checkout"') and "core_notification" in sql[4]
    assert sum(1 for s in sql if 'UPDATE "proposals_proposal"' in s) == 2  # confirm, then execute
