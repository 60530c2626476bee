"""Every write path leaves its trace in the row's history, in the same transaction (core/history.py)."""

import io

import pgtrigger
import pytest
from django.core.management import call_command
from django.db import DatabaseError, connection, transaction
from django.db.models.functions import Now
from rest_framework.test import APIClient

from bookings.models import Booking
from bookings.services import cancel_booking, sandbox_deliver, start_checkout
from core.history import row_history
from core.models import Membership
from tests.bookings.factories import PackageFactory, future
from tests.factories import MembershipFactory, TenantFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def booking(tenant):
    package = PackageFactory(tenant=tenant, name="Cruise")
    return start_checkout(
        tenant=tenant, package_id=package.pk, date=future(), customer_name="Ann", customer_email="a@b.co"
    )


def newest(booking):
    return row_history(Booking.objects.get(pk=booking.pk))[0]


def test_a_raw_update_that_no_model_code_sees_is_recorded(booking):
    Booking.objects.filter(pk=booking.pk).update(customer_name="Anna")  # no save(), no signal
    entry = newest(booking)
    assert entry.what == "changed" and ("customer name", "Ann", "Anna") in entry.changes
    assert entry.who == "a direct write (no request, no command)"


def test_an_api_write_names_the_token_user_and_the_url(tenant, booking):
    member = MembershipFactory(tenant=tenant, role=Membership.Role.STAFF)
    client = APIClient()
    client.force_authenticate(member.user)
    assert client.post(f"/api/t/{tenant.slug}/bookings/{booking.pk}/cancel", format="json").status_code == 200
    entry = newest(booking)
    assert ("status", "held", "cancelled") in entry.changes
    # (the sandbox provider closes the checkout with a payment event inside this same request)
    assert entry.who.startswith(f"{member.user.username} · ")
    assert entry.who.endswith(f" · /api/t/{tenant.slug}/bookings/{booking.pk}/cancel")


def test_an_admin_action_names_the_operator(admin_client, admin_user, booking):
    response = admin_client.post(
        "/admin/bookings/booking/", {"action": "release_hold_selected", "_selected_action": [booking.pk]}
    )
    assert response.status_code == 302
    entry = newest(booking)
    assert ("status", "held", "expired") in entry.changes
    # A release then closes the payment page; the sandbox provider answers with its expiry event at once,
    # in the same request (Stripe's would come later, as its own request), which the context names too.
    who = entry.who.split(" · ")
    assert (who[0], who[-1]) == (admin_user.username, "/admin/bookings/booking/")
    assert all(part.startswith("payment event evt_sandbox_") for part in who[1:-1])


def test_a_command_and_the_worker_name_the_command(booking):
    Booking.objects.filter(pk=booking.pk).update(hold_expires_at=Now())
    call_command("expire_holds", stdout=io.StringIO())
    assert newest(booking).who == "command expire_holds"


def test_a_payment_event_names_itself(booking):
    result = sandbox_deliver(booking.checkout, "checkout.session.completed")
    entry = newest(booking)
    assert ("status", "held", "confirmed") in entry.changes
    assert entry.who == f"payment event {result.event_id}"


def test_the_history_reads_newest_first_with_names_not_ids(admin_client, booking):
    cancel_booking(booking.pk)
    page = admin_client.get(f"/admin/bookings/booking/{booking.pk}/history/")
    assert page.status_code == 200
    whats = [entry.what for entry in page.context["entries"]]
    assert whats == ["changed", "created"]  # newest first
    created = page.context["entries"][-1]
    assert created.changes == []
    assert "Cruise" not in str(page.context["entries"][0].changes)  # only what changed is listed


def test_history_rows_are_append_only(booking):
    event = Booking.objects.get(pk=booking.pk).row_history.first()
    with pytest.raises(DatabaseError, match="Cannot update or delete"), transaction.atomic():
        type(event).objects.filter(pk=event.pk).update(customer_name="forged")
    with pytest.raises(DatabaseError, match="Cannot update or delete"), transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(f"DELETE FROM {type(event)._meta.db_table} WHERE pgh_id = %s", [event.pk])  # noqa: S608 - a table name from _meta


def test_another_tenants_history_page_is_404(client, booking, django_user_model):
    staff = django_user_model.objects.create_user("other-staff", password="pw", is_staff=True)
    Membership.objects.create(tenant=TenantFactory(slug="elsewhere"), user=staff, role=Membership.Role.STAFF)
    client.force_login(staff)
    assert client.get(f"/admin/bookings/booking/{booking.pk}/history/").status_code == 404


def test_recent_activity_lists_only_the_users_tenants_newest_first(client, booking, tenant, django_user_model):
    other = TenantFactory(slug="elsewhere")
    theirs = PackageFactory(tenant=other, name="Not yours")
    staff = django_user_model.objects.create_user("viewer", password="pw", is_staff=True)
    Membership.objects.create(tenant=tenant, user=staff, role=Membership.Role.VIEWER)
    client.force_login(staff)
    Booking.objects.filter(pk=booking.pk).update(customer_name="Anna")
    assert "/admin/activity/" in client.get("/admin/").content.decode()
    page = client.get("/admin/activity/")
    assert page.status_code == 200
    rows = [(item.model.model_name, item.obj_id, item.what) for item in page.context["activity"]]
    assert ("booking", booking.pk, "changed") in rows  # (one test transaction: one timestamp for all)
    assert [item.when for item in page.context["activity"]] == sorted(
        (i.when for i in page.context["activity"]), reverse=True
    )
    assert ("package", theirs.pk, "created") not in rows
    assert f"/admin/bookings/booking/{booking.pk}/history/" in page.content.decode()


def test_a_changed_relation_reads_as_a_link_to_the_named_row(admin_client, tenant):
    from proposals.models import Proposal
    from tests.proposals.factories import make_proposal

    proposal = make_proposal(tenant)
    other = PackageFactory(tenant=tenant, name="Sunset sail")
    with pgtrigger.ignore("proposals.Proposal:proposal_terms_transition"):  # a raw writer past the trigger
        Proposal.objects.filter(pk=proposal.pk).update(package=other)
    [change] = [c for c in row_history(Proposal.objects.get(pk=proposal.pk))[0].changes if c[0] == "package"]
    assert change[2] == f'<a href="/admin/bookings/package/{other.pk}/change/">Sunset sail</a>'
    page = admin_client.get(f"/admin/proposals/proposal/{proposal.pk}/history/").content.decode()
    assert f'<a href="/admin/bookings/package/{other.pk}/change/">Sunset sail</a>' in page
