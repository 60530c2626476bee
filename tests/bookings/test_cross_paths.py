"""Every writer of a booking or a package, at once: webhook, admin form and actions, API, sweep, checkouts.

Storms line the paths up on a barrier (core.storm) and then assert the exact outcome
each order allows and the invariants. Deterministic interleavings hold, from a second
connection, exactly the lock one path takes while another runs, for the worst orders.
"""

import html
import io
import re
import time
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.db import transaction
from django.db.models.functions import Now
from django.test import Client
from django.urls import reverse

from bookings import notifications as notices
from bookings.exceptions import PaymentProviderUnavailable
from bookings.managers import active_q
from bookings.models import Booking, Checkout, Package
from bookings.payments.sandbox import build_event
from bookings.services import COMPLETED, cancel_booking, create_provider_checkout, hold_in_transaction, start_checkout
from core.invariants import assert_invariants
from tests.bookings.factories import PackageFactory, book, future, hold_without_provider_answer, withdraw
from tests.bookings.interleave import admin_change_data
from tests.bookings.providers import InterruptedProvider
from tests.bookings.test_notifications import owed
from tests.bookings.test_webhooks import URL
from tests.conftest import token_client
from tests.races import Background, OpenTransaction, run_concurrently, tally, wait_until_blocked_or_done

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def staff(tenant, member, admin_user):
    """Clients for every writer: one per thread (a test Client is not thread-safe)."""

    def admin():
        client = Client()
        client.force_login(admin_user)
        return client

    return {"admin": admin, "api": lambda: token_client(member)}


def pay(checkout):
    """The provider's signed checkout.session.completed, through the webhook endpoint."""
    payload, signature = build_event(Checkout.objects.get(pk=checkout.pk), COMPLETED)
    return Client().post(URL, data=payload, content_type="application/json", HTTP_STRIPE_SIGNATURE=signature)


def admin_action(client, action, booking):
    """The changelist's messages after the action, read from the page (``response.context`` collects
    templates rendered by every thread, so racing tests read what this response rendered)."""
    response = client.post(
        reverse("admin:bookings_booking_changelist"),
        {"action": action, "apply": "1", "_selected_action": [booking.pk]},
        follow=True,
    )
    assert response.status_code == 200
    return re.findall(r'<li class="(?:success|warning|error|info)">(.*?)</li>', response.content.decode(), re.S)


def page_text(response):
    return html.unescape(response.content.decode())


def status_of(booking):
    return Booking.objects.get(pk=booking.pk).status


# --- bookings: every writer at once ------------------------------------------------------


@pytest.mark.parametrize("round_", range(6))
def test_every_booking_writer_at_once(round_, staff, tenant, recording_provider):
    """Webhook, admin e-mail edit, cancel API, admin cancel and release actions and the sweep, together.

    The hold has expired (so the sweep and release have work), the date is free. Every order ends in one
    of two exact outcomes: a cancel won -> the booking is refunded, the provider asked exactly once; no
    cancel won (a release or the sweep came first) -> the late payment confirmed it, nothing refunded.
    The admin form read before the storm writes only the e-mail, or is refused as stale. Never a 500.
    """
    package = PackageFactory(tenant=tenant, daily_capacity=1)
    booking = book(package, future(30 + round_))
    Booking.objects.filter(pk=booking.pk).update(hold_expires_at=Now() - timedelta(seconds=1))
    admins = [staff["admin"]() for _ in range(3)]
    change_url = reverse("admin:bookings_booking_change", args=[booking.pk])
    form = admin_change_data(admins[0].get(change_url), customer_email="fixed@example.com")
    api = staff["api"]()

    def attempt(i):
        if i == 0:
            response = pay(booking.checkout)
            return response.status_code, response.json().get("result")
        if i == 1:
            response = admins[0].post(change_url, form)
            return response.status_code, "" if response.status_code == 302 else page_text(response)
        if i == 2:
            response = api.post(f"/api/t/acme/bookings/{booking.pk}/cancel", format="json")
            return response.status_code, response.json().get("status") or response.json()["error"]["code"]
        if i == 3:
            return admin_action(admins[1], "cancel_selected", booking)
        if i == 4:
            return admin_action(admins[2], "release_hold_selected", booking)
        out = io.StringIO()
        call_command("expire_holds", stdout=out)
        return out.getvalue()

    outcomes = run_concurrently(attempt, 6)
    assert tally(outcomes) == {"ok": 6}, [o.error for o in outcomes if not o.ok]
    paid, edit, api_cancel, admin_cancel, release, _sweep = (o.value for o in outcomes)
    assert paid[0] == 200 and paid[1] in ("confirmed", "refund_pending"), paid
    cancelled = [api_cancel[0] == 200, any("1 booking cancelled" in m for m in admin_cancel)]
    assert api_cancel[0] in (200, 409) and (api_cancel[0] == 200 or api_cancel[1] == "booking_not_cancellable")
    assert any("1 hold released" in m or "booking_not_held" in m for m in release), release
    assert sum(cancelled) <= 1
    final = Booking.objects.get(pk=booking.pk)
    if any(cancelled):
        assert final.status == "refunded" and recording_provider.refunds == [booking.pk]
        assert Checkout.objects.get(booking=booking).refund_state == "succeeded"
    else:
        assert final.status == "confirmed" and recording_provider.refunds == []
        assert paid[1] == "confirmed"
    if paid[1] == "refund_pending":  # the payment found it cancelled: that cancel's refund is the one made
        assert any(cancelled)
    if edit[0] == 302:
        assert final.customer_email == "fixed@example.com"
    else:
        assert edit[0] == 200 and "changed by someone else" in edit[1], edit
        assert final.customer_email == "ann@example.com"
    assert_invariants()


def test_admin_form_read_before_the_payment_and_saved_after_is_refused(admin_client, tenant):
    """Regression (issue 10, 1): the Save wrote back the stale ``held``; the paid booking later expired."""
    booking = book(PackageFactory(tenant=tenant), future())
    change_url = reverse("admin:bookings_booking_change", args=[booking.pk])
    form = admin_change_data(admin_client.get(change_url), customer_email="fixed@example.com")
    assert pay(booking.checkout).json()["result"] == "confirmed"
    response = admin_client.post(change_url, form)
    assert response.status_code == 200
    assert response.context["adminform"].form["customer_email"].value() == "fixed@example.com"  # kept
    assert "now version 2" in str(response.context["adminform"].form.non_field_errors())
    final = Booking.objects.get(pk=booking.pk)
    assert (final.status, final.customer_email) == ("confirmed", "ann@example.com")
    response = admin_client.post(
        change_url, admin_change_data(admin_client.get(change_url), customer_email="fixed@example.com")
    )
    assert response.status_code == 302
    final = Booking.objects.get(pk=booking.pk)
    assert (final.status, final.customer_email, final.version) == ("confirmed", "fixed@example.com", 3)


def test_admin_form_saved_while_the_payment_holds_the_booking_row_waits_and_is_refused(admin_client, tenant):
    """The payment has locked the booking row and not committed: the contact edit waits for that row
    lock, then sees the version the payment made, and refuses. Without the row lock in edit_contact it
    would compare against the uncommitted past and write."""
    booking = book(PackageFactory(tenant=tenant), future())
    change_url = reverse("admin:bookings_booking_change", args=[booking.pk])
    form = admin_change_data(admin_client.get(change_url), customer_email="fixed@example.com")

    payment = OpenTransaction(lambda: Booking.objects.confirm_payment(booking.pk)).start()
    save = Background(lambda: admin_client.post(change_url, form))
    try:
        assert wait_until_blocked_or_done(save) is True  # the form waits for the payment's row lock
    finally:
        payment.commit()
    response = save.join().result
    assert response.status_code == 200 and "changed by someone else" in str(
        response.context["adminform"].form.non_field_errors()
    )
    final = Booking.objects.get(pk=booking.pk)
    assert (final.status, final.customer_email) == ("confirmed", "ann@example.com")


def test_a_cancel_committing_between_the_payments_read_and_write_is_not_lost(tenant, recording_provider):
    """Regression (issue 10, 9): the cancel answered "cancelled", the booking ended confirmed, nothing refunded.

    The cancel holds the booking row (its UPDATE done, not committed) while the payment runs: the
    payment waits for that row lock before it reads the status, then sees ``cancelled`` and goes to
    refund_pending, refunding once. Without the row lock the payment reads ``held`` and its write lands
    on the cancelled row (refused by the state machine: a 409 on the first delivery, not a settlement).
    """
    booking = book(PackageFactory(tenant=tenant), future())
    cancel = OpenTransaction(lambda: Booking.objects.cancel(booking.pk, tenant=tenant)).start()
    webhook = Background(lambda: pay(booking.checkout))
    try:
        assert wait_until_blocked_or_done(webhook) is True
    finally:
        assert cancel.commit().status == "cancelled"
    response = webhook.join().result
    assert response.status_code == 200, response.content
    assert response.json()["result"] == "refund_pending"
    assert status_of(booking) == "refunded"
    assert recording_provider.refunds == [booking.pk]


# --- packages: capacity edits and deletes against checkouts ---------------------------------


@pytest.mark.parametrize("round_", range(3))
def test_capacity_edits_racing_a_storm_of_checkouts(round_, staff, tenant):
    """API PUT and PATCH and the admin form lower the capacity 6 -> 3 while 24 checkouts fill the date.

    The checkouts are staggered over the edits, which repeat (the PATCH raising back to 6 and lowering
    again, so each lowering can meet a checkout in flight): every edit either lands (the occupancy
    at that moment fits) or is refused with capacity_below_occupancy (or version_conflict: the form was
    read before the storm, and each API edit names the version it read, which the other may have changed);
    every checkout gets a place or date_unavailable; the places taken never
    exceed the capacity the package ends with. Never a 500.
    """
    package = PackageFactory(tenant=tenant, daily_capacity=6, price=Decimal("10.00"))
    day = future(40 + round_)
    admin = staff["admin"]()
    change_url = reverse("admin:bookings_package_change", args=[package.pk])
    form = admin_change_data(admin.get(change_url), daily_capacity=3)
    apis = [staff["api"]() for _ in range(2)]
    path = f"/api/t/acme/packages/{package.pk}"

    def read(api):  # each edit names the version it read (the other API client may write in between)
        return api.get(path).json()["version"]

    edits = {
        24: lambda: apis[0].put(
            path, {"name": package.name, "price": "10.00", "daily_capacity": 3, "version": read(apis[0])}, format="json"
        ),
        # raise back to 6, then lower to 3 again: every lowering is another chance to race a checkout
        25: lambda repeat: apis[1].patch(
            path, {"daily_capacity": 6 if repeat % 2 == 0 else 3, "version": read(apis[1])}, format="json"
        ),
    }

    def edit(i):
        results = []
        for repeat in range(8):
            response = edits[i](repeat) if i == 25 else edits[i]()
            results.append("edited" if response.status_code == 200 else response.json()["error"]["code"])
            time.sleep(0.004)
        return results

    def attempt(i):
        if i in edits:
            return edit(i)
        if i == 26:
            time.sleep(0.01)
            response = admin.post(change_url, form)
            return "edited" if response.status_code == 302 else page_text(response)
        time.sleep(0.006 * i)
        return start_checkout(
            tenant=tenant, package_id=package.pk, date=day, customer_name=f"C{i}", customer_email="c@example.com"
        ).pk

    outcomes = run_concurrently(attempt, 27)
    codes = tally(outcomes[:24])
    assert set(codes) <= {"ok", "date_unavailable"}, [o.error for o in outcomes if not o.ok]
    for i in edits:
        assert set(outcomes[i].value) <= {"edited", "capacity_below_occupancy", "version_conflict"}, outcomes[i]
    admin_result = outcomes[26].value
    assert admin_result == "edited" or "changed by someone else" in admin_result or "below" in admin_result
    final = Package.objects.get(pk=package.pk)
    taken = Booking.objects.filter(package=package, date=day).filter(active_q()).count()
    assert taken == codes["ok"] <= final.daily_capacity
    assert final.daily_capacity in (3, 6)
    assert_invariants()


def test_a_checkout_waits_for_a_capacity_edit_and_counts_against_the_new_capacity(tenant):
    """The edit holds the package lock (exclusive, not committed) after checking occupancy 1 <= 1: the
    checkout must wait for it and then count against capacity 1. Without the package lock in hold it
    counts against the old capacity 2 and a second booking lands on a date of capacity 1."""
    package = PackageFactory(tenant=tenant, daily_capacity=2)
    day = future()
    book(package, day)
    edit = OpenTransaction(lambda: Package.objects.edit_package(package.pk, tenant=tenant, daily_capacity=1))
    edit.start()
    checkout = Background(lambda: book(package, day, name="Late"))
    try:
        blocked = wait_until_blocked_or_done(checkout)
    finally:
        edit.commit()
    checkout.join()
    assert blocked is True
    assert getattr(checkout.error, "code", checkout.error) == "date_unavailable"
    assert Booking.objects.filter(package=package, date=day).filter(active_q()).count() == 1


def test_a_late_payment_waits_for_a_capacity_edit_and_counts_against_the_new_capacity(tenant, recording_provider):
    """Capacity 3 -> 2 passes the occupancy check over two live holds (a third hold expired). The expired
    hold's payment arrives while the edit holds the package lock: it waits (its own shared package lock)
    and finds the date full under capacity 2: refund_pending. Without that lock it confirms against the
    capacity 3 it read, and the date ends with three bookings for two places."""
    package = PackageFactory(tenant=tenant, daily_capacity=3)
    day = future()
    late, live, other = book(package, day), book(package, day, name="Bob"), book(package, day, name="Cy")
    Booking.objects.filter(pk=late.pk).update(hold_expires_at=Now() - timedelta(seconds=1))
    edit = OpenTransaction(lambda: Package.objects.edit_package(package.pk, tenant=tenant, daily_capacity=2))
    edit.start()
    webhook = Background(lambda: pay(late.checkout))
    try:
        blocked = wait_until_blocked_or_done(webhook)
    finally:
        edit.commit()
    assert webhook.join().result.json()["result"] == "refund_pending" and blocked is True
    assert status_of(late) == "refunded" and status_of(live) == status_of(other) == "held"
    assert Booking.objects.filter(package=package, date=day).filter(active_q()).count() == 2


def test_raising_capacity_over_two_holds_on_an_exclusive_date_then_paying_both(api_client, tenant, recording_provider):
    """Regression (issue 10, 3): the second payment hit the unique index: a 500 on every redelivery."""
    package = PackageFactory(tenant=tenant, daily_capacity=1)
    day = future()
    first = book(package, day)
    Booking.objects.filter(pk=first.pk).update(hold_expires_at=Now() - timedelta(seconds=1))
    second = book(package, day, name="Bob")  # the date was free again
    assert Booking.objects.filter(package=package, exclusive=True).count() == 2
    patched = api_client.patch(
        f"/api/t/acme/packages/{package.pk}", {"daily_capacity": 2, "version": package.version}, format="json"
    )
    assert patched.status_code == 200, patched.content

    outcomes = run_concurrently(lambda i: pay((first, second)[i].checkout), 2)
    results = sorted(o.value.json()["result"] for o in outcomes)
    assert [o.value.status_code for o in outcomes] == [200, 200]
    assert results == ["confirmed", "confirmed"]
    assert recording_provider.refunds == []
    assert_invariants()


def test_lowering_capacity_between_a_hold_and_its_payment_refunds_instead_of_a_500(
    api_client, tenant, recording_provider
):
    """Capacity 2 -> 1 is allowed over one live hold and an expired one; the expired hold's late
    payment then finds no place: refund_pending, refunded once, never a 500, never stuck."""
    package = PackageFactory(tenant=tenant, daily_capacity=2)
    day = future()
    late, live = book(package, day), book(package, day, name="Bob")
    Booking.objects.filter(pk=late.pk).update(hold_expires_at=Now() - timedelta(seconds=1))
    edit = {"daily_capacity": 1, "version": package.version}
    assert api_client.patch(f"/api/t/acme/packages/{package.pk}", edit, format="json").status_code == 200
    assert pay(live.checkout).json()["result"] == "confirmed"
    response = pay(late.checkout)
    assert response.status_code == 200 and response.json()["result"] == "refund_pending"
    assert status_of(late) == "refunded" and recording_provider.refunds == [late.pk]


def test_deleting_a_package_while_checkouts_run_is_409_or_404_never_500(staff, tenant):
    package = PackageFactory(tenant=tenant, daily_capacity=3)
    api = staff["api"]()

    def attempt(i):
        if i == 0:
            response = api.delete(f"/api/t/acme/packages/{package.pk}")
            return response.status_code if response.status_code == 204 else response.json()["error"]["code"]
        return book(package, future(i)).pk

    outcomes = run_concurrently(attempt, 12)
    checkouts = tally(outcomes[1:])
    assert set(checkouts) <= {"ok", "package_not_found"}, [o.error for o in outcomes if not o.ok]
    if outcomes[0].value == 204:
        assert checkouts == {"package_not_found": 11} and not Package.objects.filter(pk=package.pk).exists()
    else:
        assert outcomes[0].value == "package_in_use" and checkouts["ok"] >= 1
        assert Booking.objects.filter(package=package).count() == checkouts["ok"]


def test_a_delete_waits_for_a_running_checkout_and_refuses(staff, tenant):
    """Regression (issue 10, 4): the delete did not see the uncommitted hold; the deferred foreign key
    failed at COMMIT: HTTP 500. The hold holds the package lock shared; the delete waits, then sees it."""
    package = PackageFactory(tenant=tenant)
    hold = OpenTransaction(
        lambda: hold_in_transaction(
            tenant=tenant, package_id=package.pk, date=future(), customer_name="A", customer_email="a@example.com"
        )
    )
    hold.start()
    api = staff["api"]()
    delete = Background(lambda: api.delete(f"/api/t/acme/packages/{package.pk}"))
    try:
        assert wait_until_blocked_or_done(delete) is True
    finally:
        hold.commit()
    response = delete.join().result
    assert response.status_code == 409 and response.json()["error"]["code"] == "package_in_use"
    assert Package.objects.filter(pk=package.pk).exists() and Booking.objects.filter(package=package).exists()


@pytest.mark.parametrize("how", ["delete", "deactivate"])
def test_a_checkout_waiting_behind_a_delete_or_a_deactivation_is_404(tenant, how):
    package = PackageFactory(tenant=tenant, daily_capacity=5)
    withdrawal = OpenTransaction(lambda: withdraw(package, how)).start()
    checkout = Background(lambda: book(package, future()))
    try:
        assert wait_until_blocked_or_done(checkout) is True
    finally:
        withdrawal.commit()
    checkout.join()
    assert getattr(checkout.error, "code", checkout.error) == "package_not_found"
    assert not Booking.objects.exists()


def test_expire_holds_judges_each_row_when_it_acts(tenant):
    """The sweep waits for a payment holding a hold's row; when it acts the row is confirmed: left alone."""
    booking = book(PackageFactory(tenant=tenant), future())
    Booking.objects.filter(pk=booking.pk).update(hold_expires_at=Now() - timedelta(seconds=1))
    payment = OpenTransaction(lambda: Booking.objects.confirm_payment(booking.pk)).start()
    sweep = Background(lambda: Booking.objects.expire_holds())
    try:
        assert wait_until_blocked_or_done(sweep) is True
    finally:
        payment.commit()
    swept = sweep.join().result
    assert (swept.done, swept.skipped) == (0, [])  # judged on the confirmed row: nothing to do, nothing refused
    assert status_of(booking) == "confirmed"


def test_a_payment_in_flight_is_never_overwritten_by_the_admin_release_or_the_api_cancel(
    staff, tenant, recording_provider
):
    """The payment holds the booking row; release and cancel wait, then act on the confirmed row."""
    booking = book(PackageFactory(tenant=tenant), future())
    admin, api = staff["admin"](), staff["api"]()
    payment = OpenTransaction(lambda: Booking.objects.confirm_payment(booking.pk)).start()
    release = Background(lambda: admin_action(admin, "release_hold_selected", booking))
    try:
        assert wait_until_blocked_or_done(release) is True
    finally:
        payment.commit()
    assert any("booking_not_held" in m for m in release.join().result)
    assert status_of(booking) == "confirmed"
    with transaction.atomic():
        Checkout.objects.mark_completed(booking.checkout.pk, provider_checkout_id="x")
    response = api.post(f"/api/t/acme/bookings/{booking.pk}/cancel", format="json")
    assert response.json()["status"] == "refunded" and recording_provider.refunds == [booking.pk]


def test_recording_a_refund_takes_the_booking_row_before_the_checkout_row(tenant, recording_provider):
    """Regression: the refund's success path locked the checkout row, then the booking row; a payment
    redelivery holding the booking row and asking for the checkout row deadlocked with it (503 in a storm).
    With the booking row held elsewhere, recording the refund must wait holding nothing, so the holder can
    still lock the checkout row at once."""
    from bookings.services import refund_booking

    booking = book(PackageFactory(tenant=tenant), future(40))
    assert pay(booking.checkout).json()["result"] == "confirmed"
    with transaction.atomic():  # the refund is owed and claimed, its provider call not yet made
        Booking.objects.cancel(booking.pk)
        Checkout.objects.request_refund(booking.checkout.pk)
    holder = OpenTransaction(lambda: Booking.objects.lock_row(booking.pk)).start()
    refunding = Background(lambda: refund_booking(booking.pk))
    try:
        assert wait_until_blocked_or_done(refunding), "the refund's write should wait for the booking row"
        with transaction.atomic():  # what the redelivered payment asks for next, on the holder's behalf
            checkout_free = Checkout.objects.select_for_update(nowait=True).filter(pk=booking.checkout.pk).exists()
        assert checkout_free
    finally:
        holder.commit()
        refunding.join()
    assert refunding.error is None and refunding.result == "succeeded"
    assert Booking.objects.get(pk=booking.pk).status == "refunded"


def test_confirm_payment_called_directly_waits_for_a_cancel_and_settles_it_as_a_refund(tenant):
    """confirm_payment takes the booking row itself (any caller, not only the webhook, which locks first):
    a cancel holding the row commits first, then the payment sees ``cancelled`` and owes a refund —
    never a confirmation written over the cancel."""
    booking = book(PackageFactory(tenant=tenant), future(41))
    cancel = OpenTransaction(lambda: Booking.objects.cancel(booking.pk)).start()

    def settle():  # as the webhook does: a payment that may not be placed owes its refund in the same transaction
        with transaction.atomic():
            result = Booking.objects.confirm_payment(booking.pk)[1]
            if result == "refund_pending":
                Checkout.objects.request_refund(booking.checkout.pk)
            return result

    paying = Background(settle)
    try:
        assert wait_until_blocked_or_done(paying), "the payment must wait for the booking row the cancel holds"
    finally:
        cancel.commit()
        paying.join()
    assert paying.error is None, paying.error
    assert paying.result == "refund_pending"
    assert Booking.objects.get(pk=booking.pk).status == "refund_pending"


@pytest.fixture
def interrupted_provider(settings):
    InterruptedProvider.reset()
    InterruptedProvider.meanwhile = None
    settings.PAYMENT_PROVIDER = "tests.bookings.providers.InterruptedProvider"
    yield InterruptedProvider
    InterruptedProvider.meanwhile = None


def assert_closed_unopened(booking, checkout, provider):
    """No pay link e-mailed, the provider's session closed, the checkout recorded expired with its session id."""
    assert notices.HELD not in owed(booking)
    assert provider.expired == [booking.pk]
    row = Checkout.objects.get(pk=booking.checkout.pk)
    assert (row.state, row.url, row.provider_checkout_id) == ("expired", "", checkout.provider_checkout_id)
    assert (checkout.state, checkout.url) == ("expired", "")


def test_a_cancel_while_the_provider_answers_never_opens_the_checkout(tenant, interrupted_provider):
    """Regression: the cancel left the ``creating`` checkout alone and the provider's answer then opened it,
    e-mailing the pay link after the cancellation and leaving the session payable."""
    booking = hold_without_provider_answer(PackageFactory(tenant=tenant))  # the hold, committed
    interrupted_provider.meanwhile = lambda: cancel_booking(booking.pk)  # the API or admin cancel
    with pytest.raises(PaymentProviderUnavailable):  # ... then the provider answers: "try again", no pay link
        create_provider_checkout(booking)
    assert owed(booking) == {notices.CANCELLED: "pending"}
    assert_closed_unopened(booking, booking.checkout, interrupted_provider)
    assert status_of(booking) == "cancelled"


def test_the_opening_waits_for_a_cancel_in_flight_and_judges_its_commit(tenant, recording_provider):
    """The cancel's transaction has changed the booking row, not committed, when the provider's answer is
    stored: the opening waits for it (a plain read would judge the snapshot's ``held`` and open)."""
    booking = hold_without_provider_answer(PackageFactory(tenant=tenant))
    cancel = OpenTransaction(lambda: Booking.objects.cancel(booking.pk)).start()
    answering = Background(lambda: create_provider_checkout(booking))
    try:
        assert wait_until_blocked_or_done(answering), "the opening must wait for the cancel's booking row"
    finally:
        cancel.commit()
        answering.join()
    assert isinstance(answering.error, PaymentProviderUnavailable), answering.error
    assert_closed_unopened(booking, booking.checkout, recording_provider)


def test_a_hold_that_lapsed_while_the_provider_answered_is_not_opened(tenant, interrupted_provider):
    """A lapsed hold is what reopen_if_stranded reopens a proposal over: its checkout must never open after."""
    booking = hold_without_provider_answer(PackageFactory(tenant=tenant))
    interrupted_provider.meanwhile = lambda: Booking.objects.filter(pk=booking.pk).update(
        hold_expires_at=Now() - timedelta(seconds=1)
    )
    with pytest.raises(PaymentProviderUnavailable):
        create_provider_checkout(booking)
    assert_closed_unopened(booking, booking.checkout, interrupted_provider)
    assert status_of(booking) == "expired"  # the session's expiry event released the lapsed hold


@pytest.mark.django_db(transaction=True)
def test_a_cancel_whose_booking_a_late_payment_makes_cancellable_between_its_update_and_its_read_decides_again(
    api_client, tenant, monkeypatch
):
    """Forced interleaving: a released hold (not cancellable: the UPDATE matches nothing) is paid, from another
    connection, just before the cancel reads why. The cancel, sent with no version, is decided again on the row
    as it now is (cancelled, refunded), never answered version_conflict it could not have caused."""
    from bookings import managers
    from bookings.payments.sandbox import COMPLETED
    from bookings.services import sandbox_deliver
    from tests.races import Background

    booking = book(PackageFactory(tenant=tenant, daily_capacity=1))
    Booking.objects.release(booking.pk)
    checkout = Booking.objects.get(pk=booking.pk).checkout
    read, paid = managers.BookingQuerySet.values_list, []

    def payment_lands_first(self, *fields, **kwargs):
        if fields == ("status", "version") and not paid:  # the cancel's read of why its UPDATE missed
            paid.append(Background(lambda: sandbox_deliver(checkout, COMPLETED, payment_status="paid")).join())
        return read(self, *fields, **kwargs)

    monkeypatch.setattr(managers.BookingQuerySet, "values_list", payment_lands_first)
    response = api_client.post(f"/api/t/acme/bookings/{booking.pk}/cancel", {}, format="json")
    assert paid and paid[0].error is None and paid[0].result.result == "confirmed"
    assert response.status_code == 200, response.content
    assert response.json()["status"] == Booking.Status.REFUNDED
    assert Checkout.objects.get(booking=booking).refund_state == Checkout.RefundState.SUCCEEDED
    assert_invariants()


def test_a_package_delete_at_a_version_waiting_on_an_edit_is_refused_when_the_edit_commits(tenant):
    """The delete takes the package lock exclusive before it reads the version: an edit holding it wins."""
    package = PackageFactory(tenant=tenant, name="Sunset")
    renaming = OpenTransaction(lambda: Package.objects.edit_package(package.pk, tenant=tenant, version=1, name="Dawn"))
    with renaming as edit:
        deleting = Background(lambda: Package.objects.delete_package(package.pk, tenant=tenant, version=1))
        assert wait_until_blocked_or_done(deleting)  # waits for the edit's package lock
        edit.commit()
    deleting.join()
    assert deleting.outcome.code == "version_conflict", repr(deleting.outcome)
    assert Package.objects.get(pk=package.pk).name == "Dawn"
