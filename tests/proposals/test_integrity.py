"""The proposal row's own guards: guarded columns, the state machine, the unlink trigger, the constraints,
the version, the one clock, and the invariants that must see each planted defect."""

import itertools
import threading
import time
from datetime import timedelta

import pgtrigger
import pytest
from django.db import transaction
from django.db.models import F
from django.db.models.functions import Now

from bookings.models import Booking, Checkout
from core.exceptions import GuardedWriteError, TransitionRefused, VersionConflict
from core.guards import database_refusals
from core.integrity import state_machines
from proposals import invariants
from proposals.exceptions import ProposalExpired, ProposalNotFound
from proposals.models import PROPOSAL_TRANSITIONS, Proposal
from proposals.services import confirm_proposal
from tests.bookings.factories import PackageFactory, future
from tests.proposals.factories import (
    drop_constraint,
    executed_proposal,
    make_proposal,
    set_booking,
    user_triggers_disabled,
)
from tests.races import Background, wait_until_blocked
from tests.refusals import refused_by

STATUSES = [value for value, _label in Proposal.Status.choices]
MACHINE = "proposal_status_transition"
UNLINK = "proposal_booking_unlink_transition"


def spare_booking(tenant, **changes):
    """A booking no proposal links (its own package and date); ``changes`` applied with the bookings' guards off."""
    with transaction.atomic():
        booking = Booking.objects.hold(
            PackageFactory(tenant=tenant, daily_capacity=10), future(40), customer_name="X", customer_email="x@e.com"
        )
    if changes:
        set_booking(booking, **changes)
    return booking


def columns_for(status, tenant, proposal=None):
    """Every column a row in ``status`` needs to satisfy the CHECK constraints (so only the machine can refuse);
    an executed ``proposal``'s booking is made for it (proposal_links_transition judges that)."""
    columns = dict(status=status, booking=None, confirmed_at=None, executed_at=None, failure_code="")
    if status in ("confirmed", "executed", "failed"):
        columns["confirmed_at"] = Now()
    if status == "executed":
        made_for = {} if proposal is None else dict(package=proposal.package, date=proposal.date)
        booking = spare_booking(tenant, status="expired", origin_proposal_id=getattr(proposal, "pk", None), **made_for)
        columns.update(booking=booking, executed_at=Now())
    if status == "failed":
        columns["failure_code"] = "date_unavailable"
    return columns


def proposal_in(status, tenant):
    """A proposal in ``status``, put there with its triggers off; an executed one links a booking it may leave."""
    proposal = make_proposal(tenant)
    if status != "pending":
        with user_triggers_disabled(Proposal):
            Proposal.objects.filter(pk=proposal.pk).update(**columns_for(status, tenant, proposal))
    return proposal


# --- the state machine ---------------------------------------------------------------------------


@pytest.mark.parametrize("old,new", list(itertools.product(STATUSES, STATUSES)))
def test_every_transition_of_the_machine_is_allowed_or_refused_by_the_database(tenant, old, new):
    (machine,) = state_machines(Proposal)
    proposal = proposal_in(old, tenant)
    changes = columns_for(new, tenant, proposal)
    if old == new == "executed":
        del changes["booking"]  # it keeps its booking: a link never moves to another (a refusal of its own)
    refusal = refused_by(lambda: Proposal.objects.filter(pk=proposal.pk).update(**changes))
    if machine.allows(old, new):
        assert refusal is None, f"{old}->{new} should be allowed, refused by {refusal}"
        assert Proposal.objects.get(pk=proposal.pk).status == new
    else:
        assert refusal == MACHINE, f"{old}->{new} should be refused by the state machine, got {refusal}"
        with pytest.raises(TransitionRefused) as refused, database_refusals(), transaction.atomic():
            Proposal.objects.filter(pk=proposal.pk).update(**changes)
        assert refused.value.params == {"old": old, "new": new}
        assert Proposal.objects.get(pk=proposal.pk).status == old


def test_the_machine_is_the_documented_one():
    (machine,) = state_machines(Proposal)
    assert machine.initial == ["pending"]
    assert set(PROPOSAL_TRANSITIONS) == {(None, "pending"), *machine.transitions}
    assert {(a, b) for a, b in itertools.product(STATUSES, STATUSES) if a != b and machine.allows(a, b)} == {
        ("pending", "confirmed"),
        ("pending", "rejected"),
        ("pending", "expired"),
        ("confirmed", "executed"),
        ("confirmed", "failed"),
        ("executed", "pending"),
    }


@pytest.mark.parametrize("status", [s for s in STATUSES if s != "pending"])
def test_a_new_proposal_cannot_start_in_any_state_but_pending(tenant, status):
    package = PackageFactory(tenant=tenant)
    columns = columns_for(status, tenant)
    refusal = refused_by(
        lambda: Proposal.objects.create(
            tenant=tenant,
            session_id="s",
            package=package,
            date=future(),
            customer_name="A",
            customer_email="a@e.com",
            expires_at=Now() + timedelta(hours=1),
            created_at=Now(),
            **columns,
        )
    )
    assert refusal == MACHINE


# --- no unlinking a live or paid booking ----------------------------------------------------------

LAPSED = Now() - timedelta(seconds=1)


def test_a_proposal_points_only_at_its_own_shop_and_booking_whoever_writes(tenant, recording_provider):
    """proposal_links_transition: a proposal for another shop's package, or linked to a booking not made
    for it (another shop's, another date's, one made for no proposal), is refused by the database (409
    invalid_transition). Only Python stopped either: the tenant gate of propose and of the hold."""
    from tests.factories import TenantFactory

    elsewhere = PackageFactory(tenant=TenantFactory())
    proposal = make_proposal(tenant)
    born = dict(session_id="chat-9", date=proposal.date, customer_name="Ann", customer_email="ann@example.com")
    insert = lambda: Proposal.objects.create(tenant=tenant, package=elsewhere, expires_at=Now(), **born)  # noqa: E731
    assert refused_by(insert) == "proposal_links_transition"
    with pytest.raises(TransitionRefused) as refusal, database_refusals(), transaction.atomic():
        insert()
    assert refusal.value.params == {"old": "package", "new": "proposal"}
    rows = Proposal.objects.filter(pk=proposal.pk)
    rows.update(status="confirmed", confirmed_at=Now())
    executed = dict(status="executed", executed_at=Now())
    for other in (
        spare_booking(tenant),  # made for no proposal, another package and date
        spare_booking(TenantFactory()),  # another shop's
        spare_booking(tenant, package=proposal.package, date=proposal.date),  # its package and date, for nobody
        spare_booking(tenant, origin_proposal_id=proposal.pk),  # made for it, another package and date
    ):
        assert refused_by(lambda other=other: rows.update(booking=other, **executed)) == "proposal_links_transition"
    made_for_it = spare_booking(tenant, package=proposal.package, date=proposal.date, origin_proposal_id=proposal.pk)
    assert refused_by(lambda: rows.update(booking=made_for_it, **executed)) is None  # its own: linked


@pytest.mark.parametrize(
    "booking, checkout",
    [
        ({}, {}),  # a live hold with an open checkout (as confirm_proposal leaves it)
        ({}, {"state": "creating"}),  # a live hold whose checkout is still being created
        ({"status": "confirmed", "confirmed_at": Now()}, {"state": "completed"}),  # paid
        ({"status": "refund_pending"}, {"state": "completed", "refund_state": "pending"}),  # paid, refund owed
        ({"status": "refunded", "refunded_at": Now()}, {"state": "completed", "refund_state": "succeeded"}),  # refunded
        ({"status": "expired"}, {"state": "open"}),  # released, but the customer holds a URL to pay
        ({"status": "expired"}, {"state": "failed", "refund_state": "failed"}),  # a refund under way
        ({"hold_expires_at": LAPSED}, {"state": "open"}),  # lapsed, URL out: a late payment would confirm it
    ],
    ids=[
        "held-open",
        "held-creating",
        "confirmed",
        "refund-pending",
        "refunded",
        "expired-open",
        "refund-failed",
        "lapsed-open",
    ],
)
def test_the_database_refuses_to_unlink_a_live_or_paid_booking(tenant, recording_provider, booking, checkout):
    proposal, linked = executed_proposal(tenant)
    set_booking(linked, checkout=checkout, **booking)
    assert (
        refused_by(
            lambda: Proposal.objects.filter(pk=proposal.pk).update(
                status="pending", booking=None, confirmed_at=None, executed_at=None
            )
        )
        == UNLINK
    )
    with pytest.raises(TransitionRefused):
        Proposal.objects.reopen(proposal.pk, booking_id=linked.pk)
    assert Proposal.objects.get(pk=proposal.pk).booking_id == linked.pk


def test_when_a_proposal_was_rejected_never_changes_whoever_writes(tenant):
    proposal = make_proposal(tenant)
    Proposal.objects.reject(proposal.pk, tenant=tenant, session_id=proposal.session_id)
    rows = Proposal.objects.filter(pk=proposal.pk)
    rejected_at = rows.get().rejected_at
    assert rejected_at is not None
    assert refused_by(lambda: rows.update(rejected_at=Now())) == "proposal_times_set_once_transition"
    assert refused_by(lambda: rows.update(rejected_at=None)) == "proposal_times_set_once_transition"
    assert rows.get().rejected_at == rejected_at


def test_the_database_refuses_to_move_an_executed_proposal_to_another_booking(tenant, recording_provider):
    """Regression: only an unlink was judged, so a raw UPDATE moving an executed proposal from its lapsed
    booking to another (another date's, another shop's) passed every trigger and CHECK."""
    from tests.factories import TenantFactory

    proposal, linked = executed_proposal(tenant)
    set_booking(linked, status="expired", checkout={"state": "failed"})  # nothing payable: it may be unlinked
    for other in (spare_booking(tenant), spare_booking(TenantFactory())):
        assert refused_by(lambda other=other: Proposal.objects.filter(pk=proposal.pk).update(booking=other)) == UNLINK
        with pytest.raises(TransitionRefused) as refusal:
            with database_refusals(), transaction.atomic():
                Proposal.objects.filter(pk=proposal.pk).update(booking=other)
        assert refusal.value.params == {"old": f"booking {linked.pk}", "new": f"booking {other.pk}"}
    assert Proposal.objects.get(pk=proposal.pk).booking_id == linked.pk
    assert Proposal.objects.reopen(proposal.pk, booking_id=linked.pk) is True  # the unlink itself still goes


@pytest.mark.parametrize(
    "booking, checkout",
    [
        ({"status": "expired"}, {"state": "failed"}),  # the provider refused: released, checkout failed
        ({"hold_expires_at": LAPSED}, {"state": "creating"}),  # the confirming process died; hold lapsed
        ({"status": "expired"}, {"state": "creating"}),
        ({"status": "cancelled"}, {"state": "expired"}),
    ],
    ids=["expired-failed", "lapsed-creating", "expired-creating", "cancelled-expired"],
)
def test_a_booking_nothing_can_be_paid_for_may_be_unlinked(tenant, recording_provider, booking, checkout):
    proposal, linked = executed_proposal(tenant)
    set_booking(linked, checkout=checkout, **booking)
    assert Proposal.objects.reopen(proposal.pk, booking_id=linked.pk) is True
    assert Proposal.objects.get(pk=proposal.pk).status == "pending"


# --- the constraints -----------------------------------------------------------------------------


def test_a_proposal_has_a_booking_only_when_executed(tenant):
    proposal = make_proposal(tenant)
    booking = spare_booking(tenant)
    assert refused_by(lambda: Proposal.objects.filter(pk=proposal.pk).update(booking=booking)) == (
        "proposal_booking_only_when_executed"
    )
    failed = proposal_in("failed", tenant)
    assert refused_by(lambda: Proposal.objects.filter(pk=failed.pk).update(booking=booking)) == (
        "proposal_booking_only_when_executed"
    )


def test_an_executed_proposal_has_its_booking_and_execution_time(tenant, recording_provider):
    proposal, booking = executed_proposal(tenant)
    set_booking(booking, status="expired", checkout={"state": "failed"})  # so the unlink trigger lets it go
    assert refused_by(lambda: Proposal.objects.filter(pk=proposal.pk).update(booking=None)) == (
        "proposal_executed_has_booking"
    )
    assert refused_by(lambda: Proposal.objects.filter(pk=proposal.pk).update(executed_at=None)) == (
        "proposal_executed_has_booking"
    )


def test_a_failed_proposal_has_its_reason_and_a_decided_one_its_confirmation_time(tenant):
    failed = proposal_in("failed", tenant)
    assert refused_by(lambda: Proposal.objects.filter(pk=failed.pk).update(failure_code="")) == (
        "proposal_failed_has_reason"
    )
    for status in ("confirmed", "failed", "executed"):
        decided = proposal_in(status, tenant)
        assert refused_by(lambda d=decided: Proposal.objects.filter(pk=d.pk).update(confirmed_at=None)) == (
            "proposal_decided_has_confirmed_at"
        )


def test_a_status_outside_the_machine_is_refused_even_without_the_trigger(tenant):
    proposal = make_proposal(tenant)
    bogus = dict(status="approved", confirmed_at=Now())  # every other CHECK satisfied
    assert refused_by(lambda: Proposal.objects.filter(pk=proposal.pk).update(**bogus)) == MACHINE
    with pgtrigger.ignore(f"proposals.Proposal:{MACHINE}"):
        assert refused_by(lambda: Proposal.objects.filter(pk=proposal.pk).update(**bogus)) == ("proposal_status_valid")


def test_one_booking_is_linked_by_one_proposal(tenant, recording_provider):
    first, booking = executed_proposal(tenant)
    second, own = executed_proposal(tenant, session_id="chat-2")
    set_booking(own, status="expired", checkout={"state": "failed"})
    moving = Proposal.objects.filter(pk=second.pk)
    assert refused_by(lambda: moving.update(booking=booking)) == UNLINK  # a link never moves, and behind it:
    with pgtrigger.ignore(f"proposals.Proposal:{UNLINK}"):
        assert refused_by(lambda: moving.update(booking=booking)) == "proposals_proposal_booking_id_key"


# --- guarded columns, the version, the contact edit ----------------------------------------------


def test_a_plain_save_may_not_write_a_guarded_column(tenant):
    proposal = make_proposal(tenant)
    proposal.status = "executed"
    with pytest.raises(GuardedWriteError):
        proposal.save()
    for field in ("status", "booking", "booking_id", "expires_at", "version", "date"):
        with pytest.raises(GuardedWriteError):
            proposal.save(update_fields=[field])
    proposal.refresh_from_db()
    proposal.customer_name = "Bea"
    proposal.save(update_fields=["customer_name"])  # a contact field: allowed, and the version follows it
    stored = Proposal.objects.get(pk=proposal.pk)
    assert (stored.customer_name, stored.status, stored.version) == ("Bea", "pending", 2)


def test_a_proposals_expiry_is_never_pushed_back_whoever_writes(tenant):
    """proposal_expiry_transition: an offer pushed past the time the customer was given would be confirmed after
    it lapsed; refused (409 invalid_transition, ``earlier->later``). Brought forward, as an expiry, it is allowed."""
    proposal = make_proposal(tenant)
    rows = Proposal.objects.filter(pk=proposal.pk)
    assert (
        refused_by(lambda: rows.update(expires_at=F("expires_at") + timedelta(days=1))) == "proposal_expiry_transition"
    )
    assert rows.get().expires_at == proposal.expires_at
    assert refused_by(lambda: rows.update(expires_at=Now())) is None


def test_a_proposal_is_confirmed_before_it_lapsed_whoever_writes(tenant):
    """proposal_confirmed_before_expiry: a lapsed offer confirmed by a raw UPDATE (the decision judges the expiry
    above its lock, a writer past it does not) is refused (409 proposal_expired); the one confirmed in time
    passes."""
    proposal = make_proposal(tenant)
    rows = Proposal.objects.filter(pk=proposal.pk)
    rows.update(expires_at=Now() - timedelta(seconds=1))
    confirm = dict(status="confirmed", confirmed_at=Now())
    assert refused_by(lambda: rows.update(**confirm)) == "proposal_confirmed_before_expiry"
    with pytest.raises(ProposalExpired), database_refusals(), transaction.atomic():
        rows.update(**confirm)
    assert rows.get().status == "pending"
    in_time = Proposal.objects.filter(pk=make_proposal(tenant).pk)
    assert refused_by(lambda: in_time.update(**confirm)) is None


def test_every_decision_and_contact_change_bumps_the_version(tenant, recording_provider):
    proposal = make_proposal(tenant)
    assert proposal.version == 1
    Proposal.objects.filter(pk=proposal.pk).update(expires_at=Now() + timedelta(minutes=5))  # not a versioned field
    assert Proposal.objects.get(pk=proposal.pk).version == 1
    edited = Proposal.objects.edit_contact(proposal.pk, version=1, customer_email="new@example.com")
    assert (edited.customer_email, edited.version) == ("new@example.com", 2)
    confirm_proposal(proposal.pk, tenant=tenant, session_id="chat-1")  # confirmed, then executed
    assert Proposal.objects.get(pk=proposal.pk).version == 4
    rejected = make_proposal(tenant, session_id="chat-2")
    Proposal.objects.reject(rejected.pk, tenant=tenant, session_id="chat-2")
    assert Proposal.objects.get(pk=rejected.pk).version == 2


def test_edit_contact_refusals(tenant):
    proposal = make_proposal(tenant)
    with pytest.raises(VersionConflict) as stale:
        Proposal.objects.edit_contact(proposal.pk, version=7, customer_name="Bea")
    assert stale.value.params == {"current": 1}
    with pytest.raises(ProposalNotFound):
        Proposal.objects.edit_contact(10**12, version=1, customer_name="Bea")
    for field in ("status", "booking", "expires_at", "tenant"):
        with pytest.raises(ValueError):
            Proposal.objects.edit_contact(proposal.pk, version=1, **{field: None})
    assert Proposal.objects.get(pk=proposal.pk).customer_name == "Ann"


# --- one clock -----------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_confirm_that_waited_for_the_row_lock_until_after_expiry_is_refused_expired(recording_provider):
    """Regression: Now() is the statement's start. A confirm that began before expires_at and waited for
    the row lock until after it was still confirmed; the clock at the moment of the check refuses it."""
    from tests.factories import TenantFactory

    tenant = TenantFactory(slug="acme")
    proposal = make_proposal(tenant, expires_in=timedelta(minutes=5))
    locked, go = threading.Event(), threading.Event()

    def holder():  # a transaction holding exactly the lock confirm's UPDATE takes
        with transaction.atomic():
            Proposal.objects.select_for_update().filter(pk=proposal.pk).first()
            locked.set()
            assert go.wait(10)
            # The deadline falls *after* the waiting confirm started, and passes while it still waits.
            Proposal.objects.filter(pk=proposal.pk).update(expires_at=Now() + timedelta(milliseconds=200))
            time.sleep(0.4)

    holding = Background(holder)
    assert locked.wait(5)
    confirming = Background(lambda: confirm_proposal(proposal.pk, tenant=tenant, session_id="chat-1"))
    try:
        wait_until_blocked('UPDATE "proposals_proposal" SET "status"')
    finally:
        go.set()
        holding.join()
        confirming.join()
    assert isinstance(confirming.error, ProposalExpired), confirming.outcome
    stored = Proposal.objects.get(pk=proposal.pk)
    assert (stored.status, stored.booking_id, stored.confirmed_at) == ("pending", None, None)
    assert not Booking.objects.exists()


# --- invariants: each one sees its planted defect ------------------------------------------------


def test_invariants_hold_on_legitimate_rows(tenant, recording_provider):
    executed_proposal(tenant)
    make_proposal(tenant)
    for check in (
        invariants.executed_proposals_have_their_booking,
        invariants.bookings_linked_once_and_only_when_executed,
        invariants.no_live_booking_behind_a_proposal_that_does_not_link_it,
        invariants.statuses_inside_the_machine,
    ):
        assert check(None) == [] and check(tenant) == []


def test_invariant_detects_an_executed_proposal_whose_booking_is_not_its_own(tenant, recording_provider):
    proposal, booking = executed_proposal(tenant)
    check = invariants.executed_proposals_have_their_booking
    with pgtrigger.ignore("bookings.Booking:booking_terms_transition"):  # planted: the database refuses it
        Booking.objects.filter(pk=booking.pk).update(origin_proposal_id=None)  # made for nobody
    assert check(tenant) == [f"proposal {proposal.pk}"]
    with pgtrigger.ignore("bookings.Booking:booking_terms_transition"):
        Booking.objects.filter(pk=booking.pk).update(origin_proposal_id=proposal.pk + 1000)  # made for another
    assert check(tenant) == [f"proposal {proposal.pk}"]
    with pgtrigger.ignore("bookings.Booking:booking_terms_transition"):  # planted: the database refuses it
        Booking.objects.filter(pk=booking.pk).update(origin_proposal_id=proposal.pk, date=future(90))  # another date
    assert check(tenant) == [f"proposal {proposal.pk}"]
    with pgtrigger.ignore("bookings.Booking:booking_terms_transition"):
        Booking.objects.filter(pk=booking.pk).update(date=proposal.date, package=PackageFactory(tenant=tenant))
    assert check(tenant) == [f"proposal {proposal.pk}"]


def test_invariant_detects_a_booking_linked_while_not_executed_or_twice(tenant, recording_provider):
    check = invariants.bookings_linked_once_and_only_when_executed
    proposal, booking = executed_proposal(tenant)
    other, own = executed_proposal(tenant, session_id="chat-2")
    drop_constraint(Proposal, "proposals_proposal_booking_id_key")
    with user_triggers_disabled(Proposal):
        Proposal.objects.filter(pk=other.pk).update(booking=booking)
    assert check(tenant) == [f"booking {booking.pk}: linked by 2 proposals"]
    drop_constraint(Proposal, "proposal_booking_only_when_executed")
    with user_triggers_disabled(Proposal):
        Proposal.objects.filter(pk=other.pk).update(status="failed", failure_code="x", booking=own)
    assert check(tenant) == [f"proposal {other.pk}: failed with a booking"]


@pytest.mark.parametrize("live", [{}, {"status": "confirmed", "confirmed_at": Now()}], ids=["held", "confirmed"])
def test_invariant_detects_a_live_booking_behind_a_proposal_that_does_not_link_it(tenant, recording_provider, live):
    check = invariants.no_live_booking_behind_a_proposal_that_does_not_link_it
    proposal, booking = executed_proposal(tenant)
    set_booking(booking, **live)
    assert check(tenant) == []
    with user_triggers_disabled(Proposal):  # the reopen the unlink trigger refuses
        Proposal.objects.filter(pk=proposal.pk).update(
            status="pending", booking=None, confirmed_at=None, executed_at=None
        )
    status = live.get("status", "held")
    assert check(tenant) == [
        f"booking {booking.pk} ({status}) from proposal {proposal.pk}: that proposal does not link it"
    ]
    set_booking(booking, status="refund_pending")  # an orphan's late payment being refunded takes no place
    assert check(tenant) == []
    set_booking(booking, status="expired")  # a dead booking behind a pending proposal is history, not a defect
    assert check(tenant) == []


def test_invariant_detects_a_second_live_booking_behind_an_executed_proposal(tenant, recording_provider):
    check = invariants.no_live_booking_behind_a_proposal_that_does_not_link_it
    proposal, booking = executed_proposal(tenant)
    with transaction.atomic():
        stray = Booking.objects.hold(
            PackageFactory(tenant=tenant, daily_capacity=5),
            proposal.date,
            customer_name="A",
            customer_email="a@e.com",
            origin_proposal_id=proposal.pk,
        )
    assert check(tenant) == [f"booking {stray.pk} (held) from proposal {proposal.pk}: that proposal does not link it"]
    set_booking(stray, hold_expires_at=LAPSED)  # an expired hold is no longer live
    assert check(tenant) == []


def test_invariant_detects_a_status_outside_the_machine(tenant):
    proposal = make_proposal(tenant)
    drop_constraint(Proposal, "proposal_status_valid")
    with user_triggers_disabled(Proposal):
        Proposal.objects.filter(pk=proposal.pk).update(status="approved", confirmed_at=Now())
    assert invariants.statuses_inside_the_machine(tenant) == [f"proposal {proposal.pk}: status 'approved'"]


def test_check_invariants_reports_the_planted_drift(tenant, recording_provider):
    from core.invariants import run_checks

    proposal, booking = executed_proposal(tenant)
    with pgtrigger.ignore("bookings.Booking:booking_terms_transition"):  # planted: the database refuses it
        Booking.objects.filter(pk=booking.pk).update(origin_proposal_id=None)
    broken = {r.description: r.violations for r in run_checks(tenant) if not r.ok}
    assert any(f"proposal {proposal.pk}" in v for vs in broken.values() for v in vs), broken


def test_checkout_table_name_is_what_the_unlink_trigger_reads():
    # The trigger's SQL names the bookings tables; a rename there must regenerate this app's migration.
    assert (Booking._meta.db_table, Checkout._meta.db_table) == ("bookings_booking", "bookings_checkout")


# --- the stranded sweep, judged on the locked rows ----------------------------------------------------


@pytest.mark.parametrize(
    "booking, checkout, reopened",
    [
        ({"hold_expires_at": LAPSED}, {"state": "creating"}, True),  # the confirming process died
        ({"status": "expired"}, {"state": "failed"}, True),  # died before storing the provider's refusal's reopen
        ({}, {"state": "creating"}, False),  # the hold is live: the confirming request may still answer
        ({"hold_expires_at": LAPSED}, {"state": "open"}, False),  # the customer holds a URL: a payment may come
        ({"status": "confirmed", "confirmed_at": Now()}, {"state": "completed"}, False),  # paid
    ],
    ids=["lapsed-creating", "expired-failed", "live-creating", "lapsed-open", "paid"],
)
def test_the_stranded_sweep_reopens_only_what_nothing_can_be_paid_for(
    tenant, recording_provider, booking, checkout, reopened
):
    proposal, linked = executed_proposal(tenant)
    set_booking(linked, checkout=checkout, **booking)
    # Judged on the locked rows whatever the candidate query said (it is not consulted here).
    assert Proposal.objects.reopen_if_stranded(proposal.pk, booking_id=linked.pk) is reopened
    stored = Proposal.objects.get(pk=proposal.pk)
    assert (stored.status, stored.booking_id) == (("pending", None) if reopened else ("executed", linked.pk))
    result = Proposal.objects.reopen_stranded()
    assert (result.done, result.skipped) == (0, [])


@pytest.mark.parametrize(
    "change",
    [
        {"date": "2099-01-02"},
        {"session_id": "another-chat"},
        {"package": "other"},
        {"tenant": "other"},
    ],
    ids=lambda c: next(iter(c)),
)
def test_the_database_refuses_moving_what_a_proposal_was_made_for(tenant, other_tenant, change):
    """A raw writer (past GuardedModel) changing its date, chat, package or tenant would book what no one proposed."""
    proposal = make_proposal(tenant)
    value = next(iter(change.values()))
    if value == "other":
        value = PackageFactory(tenant=tenant) if "package" in change else other_tenant
    with pytest.raises(TransitionRefused), database_refusals(), transaction.atomic():
        Proposal.objects.filter(pk=proposal.pk).update(**{next(iter(change)): value})
    assert Proposal.objects.filter(pk=proposal.pk).values_list("date", "session_id", "package", "tenant").get() == (
        proposal.date,
        proposal.session_id,
        proposal.package_id,
        proposal.tenant_id,
    )
