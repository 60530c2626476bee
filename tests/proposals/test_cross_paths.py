"""Every writer of a proposal at once, and the worst interleavings held open from a second connection.

Writers: confirm and reject over the API, a real admin change-form POST (with the hidden
``expected_version`` the form rendered), the admin ``expire_selected`` action, the
``sweep_proposals`` command and the ``reopen_stranded`` sweep; the payment webhook's
booking operations where a sweep races them.
"""

import io
import re
from datetime import timedelta

import pgtrigger
import pytest
from django.contrib.messages import get_messages
from django.core.management import call_command
from django.db import transaction
from django.db.models.functions import Now
from django.test import Client
from django.urls import reverse

from bookings.models import Booking, Checkout
from core.db import LockNamespace
from core.exceptions import DomainError
from core.invariants import assert_invariants
from proposals.models import Proposal
from proposals.services import confirm_proposal
from tests.bookings.factories import PackageFactory, withdraw
from tests.conftest import token_client
from tests.factories import MembershipFactory, TenantFactory, UserFactory
from tests.proposals.factories import make_proposal
from tests.proposals.providers import GatedFailingProvider
from tests.races import Background, OpenTransaction, advisory_locked, run_concurrently, wait_until, wait_until_blocked

pytestmark = pytest.mark.django_db(transaction=True)

UNLINK_TRIGGER = "proposals.Proposal:proposal_booking_unlink_transition"
STALE = "changed by someone else"


@pytest.fixture
def tenant():
    return TenantFactory(slug="acme")


@pytest.fixture
def member(tenant):
    return MembershipFactory(tenant=tenant, user=UserFactory(username="member")).user


def admin_session(admin_user):
    client = Client()
    client.force_login(admin_user)
    return client


def change_url(proposal):
    return reverse("admin:proposals_proposal_change", args=[proposal.pk])


def open_change_form(client, proposal):
    """GET the change form as an operator's browser does; return the POST data it would send back."""
    page = client.get(change_url(proposal))
    assert page.status_code == 200
    html = page.content.decode()
    version = re.search(r'name="expected_version" value="(\d+)"', html)
    assert version, "the change form renders the version it was read at"
    return {
        "customer_name": re.search(r'name="customer_name" value="([^"]*)"', html).group(1),
        "customer_email": re.search(r'name="customer_email" value="([^"]*)"', html).group(1),
        "expected_version": version.group(1),
    }


def live_bookings_from(proposal):
    return list(
        Booking.objects.filter(origin_proposal_id=proposal.pk)
        .filter(status__in=["confirmed", "held"])
        .exclude(status="held", hold_expires_at__lte=Now())
        .values_list("pk", flat=True)
    )


# --- the storm -----------------------------------------------------------------------------------


WRITERS = ["confirm", "reject", "edit", "expire", "command", "sweep"]


def storm(proposal, *, api, form_client, action_client, form):
    """Fire every writer of ``proposal`` at once; return {writer: what it answered}."""
    proposals_url = f"/api/t/acme/proposals/{proposal.pk}"

    def decide(verb):
        r = api.post(f"{proposals_url}/{verb}", {"session_id": "chat-1"}, format="json")
        return "won" if r.status_code == 200 else r.json()["error"]["code"]

    def edit():
        r = form_client.post(change_url(proposal), form)
        if r.status_code == 302:
            return "saved"
        assert r.status_code == 200 and STALE in r.content.decode(), r.status_code
        assert f'value="{form["customer_name"]}"' in r.content.decode()  # the operator's input is kept
        return "version_conflict"

    def expire_action():
        r = action_client.post(
            "/admin/proposals/proposal/", {"action": "expire_selected", "_selected_action": [proposal.pk]}, follow=True
        )
        # this response's own messages: r.context gathers what every racing thread rendered
        msgs = " | ".join(str(m) for m in get_messages(r.wsgi_request))
        return "won" if "1 proposal expired" in msgs else msgs

    def command():
        out = io.StringIO()
        call_command("sweep_proposals", stdout=out, stderr=io.StringIO())
        return "won" if "Expired proposals: 1" in out.getvalue() else out.getvalue()

    def sweep():
        result = Proposal.objects.reopen_stranded()
        return (result.done, [r.code for _pk, r in result.skipped])

    writers = [lambda: decide("confirm"), lambda: decide("reject"), edit, expire_action, command, sweep]
    outcomes = run_concurrently(lambda i: writers[i](), len(writers))
    assert all(o.ok for o in outcomes), [repr(o.error) for o in outcomes if not o.ok]
    return dict(zip(WRITERS, [o.value for o in outcomes], strict=True))


@pytest.mark.parametrize("lapsing", [False, True], ids=["live", "lapsing-mid-storm"])
def test_every_writer_at_once_makes_exactly_one_decision(tenant, member, admin_user, recording_provider, lapsing):
    package = PackageFactory(tenant=tenant, daily_capacity=50)
    for round_ in range(3):
        proposal = make_proposal(tenant, package=package)
        form_client = admin_session(admin_user)
        form = {**open_change_form(form_client, proposal), "customer_name": f"Edited {round_}"}
        if lapsing:  # the deadline falls while the writers run: expiry judged by each one at its moment
            Proposal.objects.filter(pk=proposal.pk).update(expires_at=Now() + timedelta(milliseconds=30))
        got = storm(
            proposal,
            api=token_client(member),
            form_client=form_client,
            action_client=admin_session(admin_user),
            form=form,
        )
        deciders = [name for name in ("confirm", "reject", "expire", "command") if got[name] == "won"]
        assert len(deciders) == 1, got
        stored = Proposal.objects.get(pk=proposal.pk)
        assert (
            stored.status
            == {"confirm": "executed", "reject": "rejected", "expire": "expired", "command": "expired"}[deciders[0]]
        ), (stored.status, got)
        for name in ("confirm", "reject"):
            assert got[name] in ("won", "proposal_already_processed", "proposal_expired"), got
        assert got["sweep"] == (0, []), got
        assert got["edit"] in ("saved", "version_conflict"), got
        assert stored.customer_name == (f"Edited {round_}" if got["edit"] == "saved" else "Ann")
        if stored.status == "executed":
            booking = Booking.objects.get(pk=stored.booking_id)
            assert live_bookings_from(stored) == [booking.pk]
            # An edit that saved committed before the confirm took the row: the booking was made from it.
            assert booking.customer_name == stored.customer_name
        else:
            assert stored.booking_id is None and not Booking.objects.filter(origin_proposal_id=stored.pk).exists()
        assert_invariants()


# --- the admin form read before a confirm commits and written after ---------------------------------


def test_a_form_opened_before_a_confirm_in_flight_and_saved_after_it_is_refused(tenant, admin_user, recording_provider):
    """The confirm holds the proposal row (its hold waits on the date lock held here); the operator saves the
    form read before it; the confirm commits; the form comes back stale with the input kept; nothing reverted."""
    proposal = make_proposal(tenant)
    client = admin_session(admin_user)
    form = {**open_change_form(client, proposal), "customer_email": "fixed@example.com"}
    with advisory_locked(LockNamespace.BOOKING_DATE, proposal.package_id, proposal.date.isoformat()):
        confirming = Background(lambda: confirm_proposal(proposal.pk, tenant=tenant, session_id="chat-1"))
        wait_until_blocked("pg_advisory_xact_lock(")  # the confirm holds the proposal row, waits for the date
        saving = Background(lambda: client.post(change_url(proposal), form))
        wait_until_blocked('SELECT "proposals_proposal"."version"')  # the form's edit waits for the row
    confirming.join()
    saving.join()
    assert confirming.error is None, confirming.error
    response = saving.result
    assert response.status_code == 200
    html = response.content.decode()
    assert STALE in html and 'value="fixed@example.com"' in html  # refused, the operator's input kept
    stored = Proposal.objects.get(pk=proposal.pk)
    booking = confirming.result[1]
    assert (stored.status, stored.booking_id, stored.customer_email) == ("executed", booking.pk, "ann@example.com")


def test_only_the_changed_fields_are_written_so_a_form_cannot_return_a_proposal_to_pending(
    tenant, admin_user, recording_provider
):
    """Even with a version check that passes, the form writes the contact fields and nothing else: the form
    read while pending (status, booking, timestamps rendered read-only) cannot put them back."""
    proposal = make_proposal(tenant)
    client = admin_session(admin_user)
    form = open_change_form(client, proposal)  # read while pending
    _, booking = confirm_proposal(proposal.pk, tenant=tenant, session_id="chat-1")
    current = Proposal.objects.get(pk=proposal.pk)
    stale_fields = {"status": "pending", "booking": "", "confirmed_at": "", "executed_at": ""}
    response = client.post(
        change_url(proposal), {**form, **stale_fields, "customer_name": "Bea", "expected_version": current.version}
    )
    assert response.status_code == 302
    stored = Proposal.objects.get(pk=proposal.pk)
    assert (stored.status, stored.booking_id, stored.customer_name) == ("executed", booking.pk, "Bea")
    assert (stored.confirmed_at, stored.executed_at) == (current.confirmed_at, current.executed_at)


# --- a late reopen after a provider failure racing a re-confirmation -------------------------------------


@pytest.mark.parametrize("unlink_trigger", [True, False], ids=["trigger-on", "manager-guard-alone"])
def test_a_late_reopen_never_unlinks_the_booking_a_reconfirmation_made(tenant, settings, unlink_trigger):
    """confirm #1: executed with B1, then the provider hangs past the hold; the sweep reopens the proposal and
    confirm #2 executes it with B2; then #1's provider fails and its reopen runs: scoped to B1, it matches nothing."""
    settings.PAYMENT_PROVIDER = "tests.proposals.providers.GatedFailingProvider"
    GatedFailingProvider.reset()
    proposal = make_proposal(tenant)

    def first_confirm():
        if unlink_trigger:
            return confirm_proposal(proposal.pk, tenant=tenant, session_id="chat-1")
        with pgtrigger.ignore(UNLINK_TRIGGER):  # only the manager's booking scope stands guard
            return confirm_proposal(proposal.pk, tenant=tenant, session_id="chat-1")

    first = Background(first_confirm)
    try:
        assert GatedFailingProvider.entered.wait(10)
        b1 = Proposal.objects.get(pk=proposal.pk).booking_id
        Booking.objects.filter(pk=b1).update(hold_expires_at=Now() - timedelta(seconds=1))  # the provider hung long
        assert Proposal.objects.reopen_stranded().done == 1
        _, b2 = confirm_proposal(proposal.pk, tenant=tenant, session_id="chat-1")
    finally:
        GatedFailingProvider.gate.set()
        first.join()
    assert getattr(first.error, "code", None) == "payment_provider_unavailable", first.outcome
    stored = Proposal.objects.get(pk=proposal.pk)
    assert (stored.status, stored.booking_id) == ("executed", b2.pk)
    assert live_bookings_from(stored) == [b2.pk]  # never two live holds for one proposal
    assert Booking.objects.get(pk=b1).status == "expired"
    with pytest.raises(DomainError) as again:
        confirm_proposal(proposal.pk, tenant=tenant, session_id="chat-1")
    assert again.value.code == "proposal_already_processed"


# --- the stranded sweep with a stale view --------------------------------------------------------------


def stranded_proposal(tenant, settings):
    """Executed, its checkout never opened (the process died in the provider call), its hold lapsed."""
    settings.PAYMENT_PROVIDER = "tests.proposals.providers.DyingProvider"
    proposal = make_proposal(tenant, package=PackageFactory(tenant=tenant, daily_capacity=5))
    with pytest.raises(RuntimeError):
        confirm_proposal(proposal.pk, tenant=tenant, session_id="chat-1")
    proposal = Proposal.objects.get(pk=proposal.pk)
    Booking.objects.filter(pk=proposal.booking_id).update(hold_expires_at=Now() - timedelta(seconds=1))
    settings.PAYMENT_PROVIDER = "sandbox"
    return proposal


def sweep_while_held(holding, unlink_trigger):
    """Run the stranded sweep while ``holding`` keeps its transaction (and locks) open on another connection,
    until the sweep waits on one of them; the sweep then does nothing. Return what ``holding`` returned."""
    with OpenTransaction(holding) as holder:
        sweeping = Background(lambda: run_sweep(unlink_trigger))
        wait_until_blocked("")  # the sweep (the only other connection) waits on a lock the holder holds
    sweeping.join()
    assert holder.error is None and sweeping.error is None, (holder.error, sweeping.error)
    assert (sweeping.result.done, sweeping.result.skipped) == (0, [])
    return holder.result


def run_sweep(unlink_trigger):
    if unlink_trigger:
        return Proposal.objects.reopen_stranded()
    with pgtrigger.ignore(UNLINK_TRIGGER):
        return Proposal.objects.reopen_stranded()


@pytest.mark.parametrize("unlink_trigger", [True, False], ids=["trigger-on", "manager-guard-alone"])
def test_the_sweep_with_a_stale_view_never_unlinks_a_reconfirmed_booking(tenant, settings, unlink_trigger):
    """A second connection reopens and re-confirms the stranded proposal and holds its row until the sweep,
    which read the proposal as stranded with B1, waits for it: judged again under the lock, it is left alone."""
    proposal = stranded_proposal(tenant, settings)
    b1 = proposal.booking_id

    def reconfirm():
        assert Proposal.objects.reopen(proposal.pk, booking_id=b1)
        _, booking = confirm_proposal(proposal.pk, tenant=tenant, session_id="chat-1")
        return booking.pk

    b2 = sweep_while_held(reconfirm, unlink_trigger)
    stored = Proposal.objects.get(pk=proposal.pk)
    assert (stored.status, stored.booking_id) == ("executed", b2)
    assert live_bookings_from(stored) == [b2]


@pytest.mark.parametrize("unlink_trigger", [True, False], ids=["trigger-on", "manager-guard-alone"])
def test_the_sweep_waits_for_a_payment_in_flight_and_keeps_the_paid_booking(tenant, settings, unlink_trigger):
    """A late payment settles the stranded booking (an expired-but-free hold becomes confirmed) and holds its
    row; the sweep, which read it as lapsed, locks the proposal, waits for the booking row, sees it paid."""
    proposal = stranded_proposal(tenant, settings)
    checkout = Checkout.objects.get(booking_id=proposal.booking_id)

    def pay():
        Booking.objects.confirm_payment(proposal.booking_id)
        Checkout.objects.mark_completed(checkout.pk, provider_checkout_id="cs_late", payment_id="pi_late")

    sweep_while_held(pay, unlink_trigger)
    stored = Proposal.objects.get(pk=proposal.pk)
    assert (stored.status, stored.booking_id) == ("executed", proposal.booking_id)
    assert Booking.objects.get(pk=proposal.booking_id).status == "confirmed"


def test_the_expiry_sweep_leaves_a_proposal_a_confirm_holds(tenant, recording_provider):
    """The confirm decided before the deadline and still holds the row when the deadline passes; the sweep's
    snapshot sees a lapsed pending proposal, skips the row the confirm holds without waiting, and the next
    run finds it executed: left alone."""
    proposal = make_proposal(tenant, expires_in=timedelta(milliseconds=300))
    with OpenTransaction(lambda: confirm_proposal(proposal.pk, tenant=tenant, session_id="chat-1")) as confirming:
        # the committed row, as the sweep sees it
        wait_until(lambda: Proposal.objects.lapsed().filter(pk=proposal.pk).exists())
        assert Proposal.objects.expire_due() == 0  # skipped, not waited for
    assert confirming.error is None, confirming.error
    assert Proposal.objects.expire_due() == 0  # judged on the row the confirm committed: executed
    assert Proposal.objects.get(pk=proposal.pk).status == "executed"


def test_a_late_payment_for_a_booking_its_proposal_no_longer_links_is_refunded_not_confirmed(
    tenant, settings, recording_provider
):
    """The stranded sweep reopened the proposal (its hold lapsed, its checkout never opened); a payment that
    still arrives for the orphaned booking must not confirm it beside whatever the proposal books next."""
    proposal = stranded_proposal(tenant, settings)
    orphan = proposal.booking_id
    assert Proposal.objects.reopen_stranded().done == 1
    checkout = Checkout.objects.get(booking_id=orphan)
    with transaction.atomic():
        booking, outcome = Booking.objects.confirm_payment(orphan)
        Checkout.objects.mark_completed(checkout.pk, provider_checkout_id="cs_orphan", payment_id="pi_orphan")
        if outcome == "refund_pending":
            Checkout.objects.request_refund(checkout.pk)
    assert outcome == "refund_pending"
    assert Booking.objects.get(pk=orphan).status == "refund_pending"
    assert Checkout.objects.get(pk=checkout.pk).refund_state == "pending"
    assert Proposal.objects.get(pk=proposal.pk).status == "pending"


@pytest.mark.parametrize("change", ["delete", "deactivate"])
def test_a_proposal_created_while_its_package_is_deleted_or_deactivated_is_refused_not_a_500(tenant, change):
    """The package edit holds BOOKING_PACKAGE exclusive; propose waits for it, then reads the package again."""
    from bookings.exceptions import PackageNotFound

    package = PackageFactory(tenant=tenant)
    with OpenTransaction(lambda: withdraw(package, change)) as editing:
        proposing = Background(
            lambda: make_proposal(
                tenant, package=package, day=package_date(), session_id="chat-9", expires_in=timedelta(minutes=5)
            )
        )
        wait_until_blocked("pg_advisory_xact_lock_shared")
    proposing.join()
    assert editing.error is None, editing.error
    assert isinstance(proposing.error, PackageNotFound), proposing.outcome
    assert not Proposal.objects.filter(session_id="chat-9").exists()


def package_date():
    from core.guards import database_clock

    return database_clock().date() + timedelta(days=30)
