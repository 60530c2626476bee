from datetime import timedelta

import pytest
from django.db.models.functions import Now

from bookings.models import Booking
from proposals.models import Proposal
from tests.bookings.factories import PackageFactory, future
from tests.proposals.factories import make_proposal
from tests.refusals import assert_error


@pytest.fixture
def package(tenant):
    return PackageFactory(tenant=tenant, daily_capacity=1)


def propose_body(package_, **overrides):
    body = {
        "session_id": "chat-1",
        "package": package_.pk,
        "date": future().isoformat(),
        "customer": {"name": "Ann", "email": "ann@example.com"},
    }
    body.update(overrides)
    return body


def test_propose_then_confirm(api_client, package):
    created = api_client.post("/api/t/acme/proposals", propose_body(package, expires_in=60), format="json")
    assert created.status_code == 201, created.content
    proposal = created.json()
    assert proposal["status"] == "pending" and proposal["customer"] == {"name": "Ann", "email": "ann@example.com"}
    assert api_client.get(f"/api/t/acme/proposals/{proposal['id']}").json()["status"] == "pending"

    confirmed = api_client.post(
        f"/api/t/acme/proposals/{proposal['id']}/confirm", {"session_id": "chat-1"}, format="json"
    )
    assert confirmed.status_code == 200, confirmed.content
    body = confirmed.json()
    booking = Booking.objects.get()
    assert body["proposal"]["status"] == "executed" and body["proposal"]["booking"] == booking.pk
    assert (body["booking"]["id"], body["booking"]["status"]) == (booking.pk, "held")
    assert body["booking"]["hold_expires_at"]
    assert body["checkout"]["id"].startswith("cs_sandbox_") and body["checkout"]["url"]
    assert_error(
        api_client.post(f"/api/t/acme/proposals/{proposal['id']}/confirm", {"session_id": "chat-1"}, format="json"),
        409,
        "proposal_already_processed",
    )


def test_confirm_with_the_same_idempotency_key_replays_the_first_answer(api_client, tenant, package):
    proposal = make_proposal(tenant, package=package)
    url = f"/api/t/acme/proposals/{proposal.pk}/confirm"
    first = api_client.post(url, {"session_id": "chat-1"}, format="json", HTTP_IDEMPOTENCY_KEY="confirm-1")
    again = api_client.post(url, {"session_id": "chat-1"}, format="json", HTTP_IDEMPOTENCY_KEY="confirm-1")
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json() and again["Idempotent-Replayed"] == "true"
    assert Booking.objects.count() == 1
    assert_error(
        api_client.post(url, {"session_id": "chat-2"}, format="json", HTTP_IDEMPOTENCY_KEY="confirm-1"),
        422,
        "idempotency_key_reused",
    )


def test_confirm_of_a_full_date_is_409_and_the_proposal_fails(api_client, tenant, package):
    day = future()
    make_proposal(tenant, package=package, day=day, session_id="s-a")
    first = Proposal.objects.get()
    second = make_proposal(tenant, package=package, day=day, session_id="s-b")
    api_client.post(f"/api/t/acme/proposals/{first.pk}/confirm", {"session_id": "s-a"}, format="json")
    assert_error(
        api_client.post(f"/api/t/acme/proposals/{second.pk}/confirm", {"session_id": "s-b"}, format="json"),
        409,
        "date_unavailable",
    )
    detail = api_client.get(f"/api/t/acme/proposals/{second.pk}").json()
    assert (detail["status"], detail["failure_code"], detail["booking"]) == ("failed", "date_unavailable", None)


def test_reject_and_expired(api_client, tenant, package):
    proposal = make_proposal(tenant, package=package)
    rejected = api_client.post(f"/api/t/acme/proposals/{proposal.pk}/reject", {"session_id": "chat-1"}, format="json")
    assert rejected.status_code == 200 and rejected.json()["status"] == "rejected"
    assert_error(
        api_client.post(f"/api/t/acme/proposals/{proposal.pk}/reject", {"session_id": "chat-1"}, format="json"),
        409,
        "proposal_already_processed",
    )
    lapsed = make_proposal(tenant, package=package)
    Proposal.objects.filter(pk=lapsed.pk).update(expires_at=Now() - timedelta(seconds=1))
    assert api_client.get(f"/api/t/acme/proposals/{lapsed.pk}").json()["status"] == "expired"  # lazy expiry
    assert_error(
        api_client.post(f"/api/t/acme/proposals/{lapsed.pk}/confirm", {"session_id": "chat-1"}, format="json"),
        409,
        "proposal_expired",
    )


def test_list_by_session(api_client, tenant, package):
    mine = make_proposal(tenant, package=package, session_id="chat-1")
    make_proposal(tenant, package=package, session_id="chat-2")
    listing = api_client.get("/api/t/acme/proposals?session_id=chat-1").json()
    assert [p["id"] for p in listing["results"]] == [mine.pk]
    assert_error(api_client.get("/api/t/acme/proposals"), 400, "invalid_input")


def test_wrong_tenant_session_unknown_and_malformed_ids(api_client, outsider_client, tenant, other_tenant, package):
    proposal = make_proposal(tenant, package=package)
    foreign = make_proposal(other_tenant)
    confirm = "/api/t/acme/proposals/{}/confirm"
    assert_error(
        api_client.post(confirm.format(proposal.pk), {"session_id": "other"}, format="json"), 404, "proposal_not_found"
    )
    assert_error(
        api_client.post(confirm.format(foreign.pk), {"session_id": "chat-1"}, format="json"), 404, "proposal_not_found"
    )
    assert_error(api_client.get(f"/api/t/acme/proposals/{foreign.pk}"), 404, "proposal_not_found")
    assert_error(
        api_client.post(confirm.format(10**9), {"session_id": "chat-1"}, format="json"), 404, "proposal_not_found"
    )
    assert_error(
        api_client.post(confirm.format(10**25), {"session_id": "chat-1"}, format="json"), 404, "proposal_not_found"
    )
    assert_error(api_client.post(confirm.format("abc"), {"session_id": "chat-1"}, format="json"), 404, "not_found")
    assert_error(
        outsider_client.post(confirm.format(proposal.pk), {"session_id": "chat-1"}, format="json"), 404, "not_found"
    )
    for body in ({}, {"session_id": ""}, {"session_id": 5 * "x" * 100}, {"session_id": ["a"]}):
        assert_error(api_client.post(confirm.format(proposal.pk), body, format="json"), 400, "invalid_input")
    assert Proposal.objects.get(pk=proposal.pk).status == "pending"


@pytest.mark.parametrize(
    "overrides, status, code",
    [
        ({"date": "2026-02-30"}, 400, "invalid_input"),
        ({"package": "x"}, 400, "invalid_input"),
        ({"package": 99999999}, 404, "package_not_found"),
        ({"expires_in": 0}, 400, "invalid_input"),
        ({"expires_in": 10**20}, 400, "invalid_input"),
        ({"expires_in": "NaN"}, 400, "invalid_input"),
        ({"customer": {"name": "A", "email": "nope"}}, 400, "invalid_input"),
        ({"session_id": ""}, 400, "invalid_input"),
    ],
)
def test_propose_bad_input(api_client, package, overrides, status, code):
    assert_error(
        api_client.post("/api/t/acme/proposals", propose_body(package, **overrides), format="json"), status, code
    )
    assert not Proposal.objects.exists()


def test_refusals_speak_arabic_when_asked(api_client, tenant, package):
    proposal = make_proposal(tenant, package=package)
    api_client.post(f"/api/t/acme/proposals/{proposal.pk}/reject", {"session_id": "chat-1"}, format="json")
    error = assert_error(
        api_client.post(
            f"/api/t/acme/proposals/{proposal.pk}/confirm",
            {"session_id": "chat-1"},
            format="json",
            HTTP_ACCEPT_LANGUAGE="ar",
        ),
        409,
        "proposal_already_processed",
    )
    assert error["message"] == "عولج هذا المقترح من قبل."


def test_provider_down_at_confirm_reopens_the_proposal_so_a_retry_succeeds(api_client, tenant, package, settings):
    """Regression: a 503 said "try again", but the proposal stayed executed with a released booking and no
    checkout, so every retry got proposal_already_processed."""
    proposal = make_proposal(tenant, package=package)
    url = f"/api/t/acme/proposals/{proposal.pk}/confirm"
    settings.PAYMENT_PROVIDER = "tests.bookings.providers.DownProvider"
    assert_error(
        api_client.post(url, {"session_id": "chat-1"}, format="json", HTTP_IDEMPOTENCY_KEY="c-1"),
        503,
        "payment_provider_unavailable",
    )
    stored = Proposal.objects.get(pk=proposal.pk)
    assert (stored.status, stored.booking_id, stored.confirmed_at, stored.executed_at) == ("pending", None, None, None)
    assert Booking.objects.get().status == "expired"  # the hold was released: the date is free
    settings.PAYMENT_PROVIDER = "sandbox"
    retried = api_client.post(url, {"session_id": "chat-1"}, format="json", HTTP_IDEMPOTENCY_KEY="c-1")
    assert retried.status_code == 200, retried.content
    stored = Proposal.objects.get(pk=proposal.pk)
    assert stored.status == "executed" and stored.booking_id == retried.json()["booking"]["id"]
    assert Booking.objects.get(pk=stored.booking_id).status == "held"


def test_a_confirm_whose_provider_answered_after_the_hold_ended_is_503_and_the_proposal_stays_confirmable(
    api_client, tenant, package, settings
):
    """Regression: the provider answered after the hold lapsed; the checkout was closed unopened, yet the
    confirm answered 200 "executed" with an empty pay URL, and the proposal stayed executed for good
    (the stranded sweep looked only at creating or failed checkouts)."""
    proposal = make_proposal(tenant, package=package)
    url = f"/api/t/acme/proposals/{proposal.pk}/confirm"
    settings.PAYMENT_PROVIDER = "tests.bookings.providers.SlowerThanTheHoldProvider"
    assert_error(api_client.post(url, {"session_id": "chat-1"}, format="json"), 503, "payment_provider_unavailable")
    stored = Proposal.objects.get(pk=proposal.pk)
    assert (stored.status, stored.booking_id) == ("pending", None)
    settings.PAYMENT_PROVIDER = "sandbox"
    retried = api_client.post(url, {"session_id": "chat-1"}, format="json")
    assert retried.status_code == 200 and retried.json()["checkout"]["url"], retried.content


def test_the_public_checkout_whose_provider_answered_after_the_hold_ended_is_503_never_a_booking_without_a_url(
    api_client, package, settings
):
    settings.PAYMENT_PROVIDER = "tests.bookings.providers.SlowerThanTheHoldProvider"
    body = {"package": package.pk, "date": future().isoformat(), "customer": {"name": "A", "email": "a@example.com"}}
    assert_error(
        api_client.post("/api/public/acme/checkouts", body, format="json"), 503, "payment_provider_unavailable"
    )
    assert Booking.objects.get().checkout.state == "expired"


@pytest.mark.parametrize("url, after", [("", "pending"), ("http://pay.example/cs_1", "executed")])
def test_a_proposal_stranded_with_a_checkout_closed_unopened_is_reopened_by_the_sweep(tenant, package, url, after):
    """The confirming process died between closing the checkout unopened and reopening the proposal. A
    checkout that expired after the customer had its pay link is no stranding: that proposal stays executed."""
    from io import StringIO

    from django.core.management import call_command

    from bookings.models import Checkout
    from proposals.services import confirm_proposal

    proposal = make_proposal(tenant, package=package)
    _proposal, booking = confirm_proposal(proposal.pk, tenant=tenant, session_id="chat-1")
    Booking.objects.filter(pk=booking.pk).update(status="expired")
    Checkout.objects.filter(booking=booking).update(state="expired", url=url)  # "": never opened
    call_command("sweep_proposals", stdout=StringIO())
    assert Proposal.objects.get(pk=proposal.pk).status == after


def test_propose_for_a_past_date_is_400_date_in_past(api_client, package):
    """Regression: a proposal for yesterday was accepted (201) although it could never be booked."""
    yesterday = (future() - timedelta(days=60)).isoformat()
    assert_error(
        api_client.post("/api/t/acme/proposals", propose_body(package, date=yesterday), format="json"),
        400,
        "date_in_past",
    )
    assert not Proposal.objects.exists()


@pytest.mark.parametrize("action", ["confirm", "reject"])
def test_an_id_past_any_column_is_proposal_not_found_with_or_without_an_idempotency_key(api_client, tenant, action):
    """Regression: the key's record keeps the path (500 characters): a 600-digit id made the claim fail, 400."""
    url = f"/api/t/acme/proposals/{'9' * 600}/{action}"
    for headers in ({}, {"HTTP_IDEMPOTENCY_KEY": "k-1"}):
        assert_error(
            api_client.post(url, {"session_id": "chat-1"}, format="json", **headers), 404, "proposal_not_found"
        )


def test_confirming_a_proposal_whose_package_was_paused_fails_it_with_the_documented_code(api_client, tenant):
    from bookings.models import Package

    proposal = make_proposal(tenant)
    Package.objects.edit_package(proposal.package_id, tenant=tenant, is_active=False)
    answer = api_client.post(f"/api/t/acme/proposals/{proposal.pk}/confirm", {"session_id": "chat-1"}, format="json")
    assert_error(answer, 404, "package_not_found")
    proposal.refresh_from_db()
    assert (proposal.status, proposal.failure_code) == ("failed", "package_not_found")
