import pytest

from proposals.models import Proposal
from proposals.services import confirm_proposal
from tests.factories import TenantFactory
from tests.proposals.factories import make_proposal
from tests.races import row_locked


def test_changelist_shows_the_booking_link_and_filters(admin_client, tenant):
    executed = make_proposal(tenant, session_id="chat-x")
    _, booking = confirm_proposal(executed.pk, tenant=tenant, session_id="chat-x")
    page = admin_client.get("/admin/proposals/proposal/?status__exact=executed&q=chat-x")
    assert page.status_code == 200
    assert f"/admin/bookings/booking/{booking.pk}/change/" in page.content.decode()
    assert admin_client.get(f"/admin/proposals/proposal/{executed.pk}/change/").status_code == 200
    assert admin_client.get("/admin/proposals/proposal/add/").status_code == 403


def test_expire_selected_reports_per_row(admin_client, tenant):
    pending, done = make_proposal(tenant), make_proposal(tenant)
    confirm_proposal(done.pk, tenant=tenant, session_id="chat-1")
    response = admin_client.post(
        "/admin/proposals/proposal/",
        {"action": "expire_selected", "_selected_action": [pending.pk, done.pk]},
        follow=True,
    )
    msgs = [str(m) for m in response.context["messages"]]
    assert any("1 proposal expired" in m for m in msgs), msgs
    assert any(f"Proposal #{done.pk}" in m and "already processed" in m for m in msgs), msgs
    assert Proposal.objects.get(pk=pending.pk).status == "expired"
    assert Proposal.objects.get(pk=done.pk).status == "executed"


def test_status_is_read_only_in_the_form(admin_client, tenant):
    proposal = make_proposal(tenant)
    admin_client.post(
        f"/admin/proposals/proposal/{proposal.pk}/change/",
        {
            "customer_name": "Bea",
            "customer_email": "bea@example.com",
            "status": "executed",
            "expected_version": proposal.version,
        },
    )
    stored = Proposal.objects.get(pk=proposal.pk)
    assert (stored.customer_name, stored.status) == ("Bea", "pending")
    assert stored.version == proposal.version + 1


@pytest.mark.django_db(transaction=True)
def test_a_row_locked_past_lock_timeout_is_reported_per_row_not_a_500(admin_client):
    """Regression: the expire action let the 55P03 of a busy row escape the admin as a 500."""
    tenant = TenantFactory(slug="acme")
    busy, free = make_proposal(tenant), make_proposal(tenant)
    with row_locked(Proposal.objects.filter(pk=busy.pk)):
        response = admin_client.post(
            "/admin/proposals/proposal/",
            {"action": "expire_selected", "_selected_action": [busy.pk, free.pk]},
            follow=True,
        )
    msgs = [str(m) for m in response.context["messages"]]
    assert any(f"Proposal #{busy.pk}" in m and "being changed by another request" in m for m in msgs), msgs
    assert any("1 proposal expired" in m for m in msgs), msgs
    assert Proposal.objects.get(pk=busy.pk).status == "pending"
