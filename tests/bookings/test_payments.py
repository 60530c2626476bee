"""Payments you can trust: paid means paid, the event must belong to the checkout, currencies, refunds that finish.

Events are built as Stripe sends them and signed by the stripe library (test_webhooks.deliver).
"""

import io
import logging
import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.db.models.functions import Now
from django.test import Client

from bookings import invariants
from bookings.exceptions import DateUnavailable
from bookings.models import Booking, Checkout, Package, PaymentEvent
from bookings.payments.sandbox import ASYNC_FAILED, ASYNC_SUCCEEDED, SandboxProvider, build_event
from bookings.services import cancel_booking, retry_refund
from tests.bookings.factories import PackageFactory, book, future, hold_without_provider_answer
from tests.bookings.test_webhooks import completed_event, deliver, event, expired_event

URL = "/api/webhooks/payments"


@pytest.fixture
def package(tenant):
    return PackageFactory(tenant=tenant)  # 100.00 USD, capacity 1


def session(booking):
    return Checkout.objects.get(booking_id=booking.pk).provider_checkout_id


def status_of(booking):
    return Booking.objects.get(pk=booking.pk).status


def checkout_of(booking):
    return Checkout.objects.get(booking_id=booking.pk)


def succeeded(session_id, **kwargs):
    return event(ASYNC_SUCCEEDED, session_id, **kwargs)


def failed(session_id, **kwargs):
    kwargs.setdefault("payment_status", "unpaid")
    return event(ASYNC_FAILED, session_id, **kwargs)


def result_of(client, payload):
    response = deliver(client, payload)
    assert response.status_code == 200, response.content
    return response.json()["result"]


def stored(result):
    return PaymentEvent.objects.get(result=result)


# --- 1. paid means paid --------------------------------------------------------------


def test_completed_but_unpaid_keeps_the_place_without_expiry_until_the_payment_succeeds(client, package):
    booking = book(package)
    assert result_of(client, completed_event(session(booking), payment_status="unpaid")) == "payment_pending"
    assert status_of(booking) == "payment_pending" and checkout_of(booking).state == "processing"
    # the place is kept: past the hold's expiry, swept or not, nobody else gets the date
    Booking.objects.filter(pk=booking.pk).update(hold_expires_at=Now() - timedelta(hours=1))
    assert Booking.objects.expire_holds().done == 0
    with pytest.raises(DateUnavailable):
        book(package, booking.date, name="Bo")
    assert result_of(client, succeeded(session(booking))) == "confirmed"
    assert status_of(booking) == "confirmed" and checkout_of(booking).state == "completed"
    assert checkout_of(booking).provider_payment_id == "pi_123"


def test_the_delayed_payment_failing_releases_the_place_and_refunds_nothing(client, package, recording_provider):
    booking = book(package)
    result_of(client, completed_event(session(booking), payment_status="unpaid"))
    assert result_of(client, failed(session(booking))) == "released"
    assert status_of(booking) == "expired" and checkout_of(booking).state == "payment_failed"
    assert checkout_of(booking).refund_state == "" and recording_provider.refunds == []
    assert book(package, booking.date, name="Bo").status == "held"  # the date is free again


@pytest.mark.parametrize("status", ["paid", "no_payment_required"])
def test_completed_and_paid_confirms(client, package, status):
    booking = book(package)
    assert result_of(client, completed_event(session(booking), payment_status=status)) == "confirmed"


@pytest.mark.parametrize("status", ["", "pending", "refunded"])
def test_an_unknown_payment_status_changes_nothing_and_is_flagged(client, package, status):
    booking = book(package)
    assert result_of(client, completed_event(session(booking), payment_status=status)) == "unexpected_payment_status"
    assert status_of(booking) == "held" and checkout_of(booking).state == "open"
    assert PaymentEvent.objects.get().needs_review is True


def test_a_failure_delivered_before_its_completed_event_is_not_undone_by_it(client, package):
    booking = book(package)
    assert result_of(client, failed(session(booking))) == "released"
    assert result_of(client, completed_event(session(booking), payment_status="unpaid")) == "unchanged"
    assert status_of(booking) == "expired" and checkout_of(booking).state == "payment_failed"


def test_a_success_delivered_before_its_completed_event_confirms_and_stays(client, package):
    booking = book(package)
    assert result_of(client, succeeded(session(booking))) == "confirmed"
    assert result_of(client, completed_event(session(booking), payment_status="unpaid")) == "unchanged"
    assert status_of(booking) == "confirmed" and checkout_of(booking).state == "completed"


def test_a_delayed_payment_the_databases_count_refuses_keeps_no_place_not_a_500(
    client, package, recording_provider, monkeypatch
):
    """Should the managers' count ever miss a place taken (a bug), the database's own count
    (booking_within_capacity) refuses the payment_pending move; caught in a savepoint, the checkout is
    processing with no place kept, as when the count sees the date full, and its success is refunded."""
    from bookings.managers import BookingManager

    late = book(package)
    Booking.objects.filter(pk=late.pk).update(hold_expires_at=Now() - timedelta(seconds=1))
    book(package, late.date, name="Bo")
    real = BookingManager._taken
    monkeypatch.setattr(BookingManager, "_taken", lambda self, *a, **k: real(self, *a, **k)._replace(taken=0))
    assert result_of(client, completed_event(session(late), payment_status="unpaid")) == "processing"
    assert status_of(late) == "held" and checkout_of(late).state == "processing"
    assert result_of(client, succeeded(session(late))) == "refund_pending"
    assert status_of(late) == "refunded" and recording_provider.refunds == [late.pk]


def test_delayed_payment_for_a_lapsed_hold_whose_date_was_taken_is_refunded_when_it_succeeds(
    client, package, recording_provider
):
    late = book(package)
    Booking.objects.filter(pk=late.pk).update(hold_expires_at=Now() - timedelta(seconds=1))
    winner = book(package, late.date, name="Bo")
    assert result_of(client, completed_event(session(late), payment_status="unpaid")) == "processing"
    assert status_of(late) == "held" and checkout_of(late).state == "processing"  # no place to keep
    assert result_of(client, succeeded(session(late))) == "refund_pending"
    assert status_of(late) == "refunded" and status_of(winner) == "held"
    assert recording_provider.refunds == [late.pk]


def test_a_payment_pending_booking_cancelled_then_paid_is_refunded_once(client, package, recording_provider):
    booking = book(package)
    result_of(client, completed_event(session(booking), payment_status="unpaid"))
    assert cancel_booking(booking.pk).status == "cancelled"
    assert recording_provider.refunds == [] and recording_provider.expired == []  # processing: nothing to expire
    payload = succeeded(session(booking))
    assert result_of(client, payload) == "refund_pending"
    assert deliver(client, payload).json()["duplicate"] is True
    assert status_of(booking) == "refunded" and recording_provider.refunds == [booking.pk]


def test_a_payment_pending_booking_cancelled_then_failed_stays_cancelled(client, package, recording_provider):
    booking = book(package)
    result_of(client, completed_event(session(booking), payment_status="unpaid"))
    cancel_booking(booking.pk)
    assert result_of(client, failed(session(booking))) == "payment_failed"
    assert status_of(booking) == "cancelled" and recording_provider.refunds == []


# --- 2. the event must belong to the checkout ----------------------------------------


def test_an_event_for_another_session_naming_our_checkout_changes_nothing(client, package, recording_provider):
    booking = book(package)
    checkout = checkout_of(booking)
    foreign = completed_event(
        "cs_other_shop", reference=str(checkout.pk), booking_id=booking.pk, payment_intent="pi_foreign"
    )
    assert result_of(client, foreign) == "mismatch_session"
    assert status_of(booking) == "held"
    after = checkout_of(booking)
    assert (after.state, after.provider_checkout_id, after.provider_payment_id) == (
        "open",
        checkout.provider_checkout_id,
        "",
    )
    event_row = stored("mismatch_session")
    assert event_row.needs_review is True and event_row.booking_id == booking.pk
    # a later cancel refunds nothing foreign (nothing was paid): the hold is simply cancelled
    assert cancel_booking(booking.pk).status == "cancelled" and recording_provider.refunds == []


def test_an_expired_event_for_another_session_never_releases_a_live_hold(client, package):
    booking = book(package)
    payload = expired_event("cs_other_shop", reference=str(checkout_of(booking).pk), booking_id=booking.pk)
    assert result_of(client, payload) == "mismatch_session"
    assert status_of(booking) == "held" and checkout_of(booking).state == "open"


def test_the_reference_fallback_needs_metadata_naming_the_same_booking(client, package):
    booking = hold_without_provider_answer(package)
    reference = str(booking.checkout.pk)
    for metadata in (None, booking.pk + 1000):
        assert result_of(client, completed_event("cs_lost", reference=reference, booking_id=metadata)) == (
            "mismatch_session"
        )
    assert status_of(booking) == "held"
    assert result_of(client, completed_event("cs_lost", reference=reference, booking_id=booking.pk)) == "confirmed"
    assert checkout_of(booking).provider_checkout_id == "cs_lost"


@pytest.mark.parametrize(
    "change,code",
    [
        ({"amount_total": 9999}, "mismatch_amount"),
        ({"amount_total": 100}, "mismatch_amount"),  # the old 2-decimal bug's shape
        ({"amount_total": None}, "mismatch_amount"),
        ({"amount_total": "10000"}, "mismatch_amount"),
        ({"currency": "eur"}, "mismatch_currency"),
        ({"currency": None}, "mismatch_currency"),
    ],
)
def test_a_payment_in_another_amount_or_currency_changes_nothing(client, package, recording_provider, change, code):
    booking = book(package)
    assert result_of(client, completed_event(session(booking), **change)) == code
    assert status_of(booking) == "held" and checkout_of(booking).state == "open"
    assert stored(code).needs_review is True
    assert recording_provider.refunds == []


def test_an_async_success_in_another_amount_does_not_confirm(client, package):
    booking = book(package)
    result_of(client, completed_event(session(booking), payment_status="unpaid"))
    assert result_of(client, succeeded(session(booking), amount_total=1)) == "mismatch_amount"
    assert status_of(booking) == "payment_pending"


def test_unknown_checkouts_are_stored_and_only_money_is_flagged(client, db):
    assert result_of(client, completed_event("cs_nobody")) == "unknown_checkout"
    assert result_of(client, expired_event("cs_nobody_else")) == "unknown_checkout"
    flags = dict(PaymentEvent.objects.values_list("type", "needs_review"))
    assert flags == {"checkout.session.completed": True, "checkout.session.expired": False}


def test_a_stored_payment_id_is_never_overwritten(client, package):
    booking = book(package)
    result_of(client, completed_event(session(booking), payment_intent="pi_first"))
    assert result_of(client, completed_event(session(booking), payment_intent="pi_second")) == "unchanged"
    assert checkout_of(booking).provider_payment_id == "pi_first"


def test_a_payment_id_stored_while_processing_is_kept_when_the_payment_succeeds(client, package):
    booking = book(package)
    result_of(client, completed_event(session(booking), payment_status="unpaid", payment_intent="pi_first"))
    assert checkout_of(booking).provider_payment_id == "pi_first"
    assert result_of(client, succeeded(session(booking), payment_intent="pi_second")) == "confirmed"
    assert checkout_of(booking).provider_payment_id == "pi_first"


def test_admin_lists_events_that_need_review_with_a_filter(admin_client, client, package):
    booking = book(package)
    result_of(client, completed_event(session(booking), amount_total=1, event_id="evt_wrong_amount"))
    result_of(client, completed_event(session(booking), event_id="evt_good"))
    page = admin_client.get("/admin/bookings/paymentevent/?needs_review__exact=1")
    assert page.status_code == 200
    html = page.content.decode()
    assert "evt_wrong_amount" in html and "evt_good" not in html
    assert "needs review" in admin_client.get("/admin/bookings/paymentevent/").content.decode().lower()


def test_a_user_who_reviewed_a_payment_event_is_not_deleted_and_the_event_keeps_their_name(
    admin_client, client, package, django_user_model
):
    """Regression: deleting the operator who cleared an event set its ``reviewed_by`` to nobody, and payment events
    keep no row history: who looked at money that was not ours was lost. Their delete page now names the event
    (Django's protected objects) and deletes nothing; deactivating them is the way to off-board."""
    booking = book(package)
    result_of(client, completed_event(session(booking), amount_total=1, event_id="evt_wrong_amount"))
    flagged = PaymentEvent.objects.get(event_id="evt_wrong_amount")
    reviewer = django_user_model.objects.create_user("reviewer", password="pw", is_staff=True)
    assert PaymentEvent.objects.mark_reviewed(flagged.pk, operator=reviewer)
    page = admin_client.post(f"/admin/auth/user/{reviewer.pk}/delete/", {"post": "yes"})
    assert page.status_code == 200 and "Cannot delete user" in page.content.decode()  # the event is protected
    assert django_user_model.objects.filter(pk=reviewer.pk).exists()
    flagged.refresh_from_db()
    assert flagged.reviewed_by_id == reviewer.pk


def test_an_operator_marks_a_flagged_event_reviewed_once_and_it_leaves_the_review_list(
    admin_client, admin_user, client, package
):
    booking = book(package)
    result_of(client, completed_event(session(booking), amount_total=1, event_id="evt_wrong_amount"))
    result_of(client, completed_event(session(booking), event_id="evt_good"))
    flagged, good = PaymentEvent.objects.get(event_id="evt_wrong_amount"), PaymentEvent.objects.get(event_id="evt_good")
    url = "/admin/bookings/paymentevent/"
    page = admin_client.post(
        url, {"action": "mark_reviewed_selected", "_selected_action": [flagged.pk, good.pk]}, follow=True
    )
    text = page.content.decode()
    assert "1 event marked reviewed." in text and "not flagged for review." in text
    flagged.refresh_from_db()
    assert (flagged.needs_review, flagged.reviewed_by_id, flagged.result) == (False, admin_user.pk, "mismatch_amount")
    assert flagged.reviewed_at is not None
    assert "evt_wrong_amount" not in admin_client.get(f"{url}?needs_review__exact=1").content.decode()
    assert admin_client.get(f"{url}{flagged.pk}/change/").status_code == 200  # still viewable, read-only
    assert not PaymentEvent.objects.mark_reviewed(flagged.pk, operator=admin_user)  # once
    assert status_of(booking) == "confirmed"  # reviewing changes nothing but the flag


def test_bad_events_are_never_a_500(client, package):
    booking = book(package)
    for payload in [
        completed_event(session(booking), amount_total=True),
        completed_event(session(booking), amount_total=10**30),
        completed_event(session(booking), currency=["usd"]),
        completed_event(session(booking), payment_status={"x": 1}),
        completed_event("cs_nobody", booking_id="x" * 300, reference="9" * 30),
        event("checkout.session.async_payment_succeeded", "cs_nobody"),
    ]:
        response = deliver(client, payload)
        assert response.status_code == 200, response.content
    assert status_of(booking) == "held"


# --- 3. currencies end to end ---------------------------------------------------------


def press(browser, page, button):
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    action = re.search(rf'<form method="post" action="([^"]+/{button})"', page).group(1)
    return browser.post(action, {"csrfmiddlewaretoken": token})


@pytest.mark.parametrize(
    "currency,price,minor,shown",
    [("USD", "450.00", 45000, "450.00"), ("JPY", "1500", 1500, "1500"), ("KWD", "12.250", 12250, "12.250")],
)
def test_checkout_sandbox_pay_confirmed_in_every_currency(
    anon_client, api_client, tenant, currency, price, minor, shown
):
    created = api_client.post(
        "/api/t/acme/packages", {"name": "Trip", "price": price, "currency": currency}, format="json"
    )
    assert created.status_code == 201, created.content
    assert created.json()["price"] == shown
    body = {
        "package": created.json()["id"],
        "date": future().isoformat(),
        "customer": {"name": "Ann", "email": "a@example.com"},
    }
    checkout = anon_client.post("/api/public/acme/checkouts", body, format="json").json()
    browser = Client(enforce_csrf_checks=True)
    page = browser.get(checkout["checkout"]["url"].removeprefix("http://127.0.0.1:8000")).content.decode()
    assert f"{shown} {currency}" in page
    assert press(browser, page, "pay").status_code == 200
    booking = Booking.objects.get(pk=checkout["booking"]["id"])
    assert booking.status == "confirmed" and booking.amount == Decimal(price)
    session_object = PaymentEvent.objects.get().payload["data"]["object"]
    assert (session_object["amount_total"], session_object["currency"]) == (minor, currency.lower())
    assert PaymentEvent.objects.get().result == "confirmed"
    detail = api_client.get(f"/api/t/acme/bookings/{booking.pk}").json()
    assert detail["amount"] == shown


def test_the_package_admin_refuses_an_unknown_currency_a_finer_price_and_one_too_large(admin_client, tenant):
    package = PackageFactory(tenant=tenant)
    url = f"/admin/bookings/package/{package.pk}/change/"
    form = admin_client.get(url).context["adminform"].form
    data = {name: form[name].value() for name in ("name", "price", "currency", "is_active", "daily_capacity")}
    data = {k: v for k, v in data.items() if v is not None}
    data["expected_version"] = package.version
    for change, field in [
        ({"currency": "ABC"}, "currency"),
        ({"price": "10.005"}, "price"),
        ({"price": "1000000"}, "price"),
    ]:
        response = admin_client.post(url, {**data, **change})
        assert response.status_code == 200  # re-rendered with the refusal, nothing written
        assert response.context["adminform"].form.errors.get(field), response.context["adminform"].form.errors
    assert Package.objects.get(pk=package.pk).currency == "USD" and Package.objects.get(pk=package.pk).version == 1


def test_prices_fit_their_currency_invariant_reports_a_planted_defect(tenant):
    package = PackageFactory(tenant=tenant)
    assert invariants.package_prices_fit_their_currency(None) == []
    Package.objects.filter(pk=package.pk).update(currency="JPY", price=Decimal("10.50"))  # bypassing the manager
    assert invariants.package_prices_fit_their_currency(None) == [f"package {package.pk}: price 10.500 JPY"]
    Package.objects.filter(pk=package.pk).update(currency="USD", price=Decimal("1000000.00"))
    assert invariants.package_prices_fit_their_currency(None) == [
        f"package {package.pk}: price 1000000.000 USD above its ceiling"
    ]
    Package.objects.filter(pk=package.pk).update(currency="ZZZ")
    assert invariants.package_prices_fit_their_currency(None) == [f"package {package.pk}: currency 'ZZZ'"]


def test_payment_pending_needs_a_processing_checkout_invariant_reports_a_planted_defect(client, package):
    booking = book(package)
    result_of(client, completed_event(session(booking), payment_status="unpaid"))
    assert invariants.pending_payments_are_processing(None) == []
    from tests.bookings.test_integrity import force_state

    force_state(Checkout, checkout_of(booking).pk, "state", "open")
    assert invariants.pending_payments_are_processing(None) == [
        f"booking {booking.pk}: payment_pending but its checkout is open"
    ]


# --- 4. the sandbox signs like Stripe --------------------------------------------------


def test_sandbox_events_are_verified_by_the_stripe_library_and_carry_stripes_fields(package, settings):
    import stripe

    booking = book(package)
    payload, header = build_event(checkout_of(booking), "checkout.session.completed", payment_status="unpaid")
    assert stripe.WebhookSignature.verify_header(payload.decode(), header, settings.PAYMENT_WEBHOOK_SECRET, 300)
    session_object = stripe.Webhook.construct_event(payload.decode(), header, settings.PAYMENT_WEBHOOK_SECRET)["data"][
        "object"
    ]
    assert session_object["id"] == session(booking)
    assert session_object["payment_status"] == "unpaid" and session_object["amount_total"] == 10000
    assert session_object["currency"] == "usd" and session_object["client_reference_id"] == str(booking.checkout.pk)
    assert session_object["metadata"]["booking_id"] == str(booking.pk)


# --- 6. refunds that finish ------------------------------------------------------------


def paid_then_cancelled(client, package, settings, provider):
    settings.PAYMENT_PROVIDER = f"tests.bookings.providers.{provider}"
    booking = book(package)
    result_of(client, completed_event(session(booking)))
    cancel_booking(booking.pk)
    return booking


def test_a_refund_the_provider_declined_is_asked_for_again_under_a_new_key(client, package, settings):
    """Regression: every attempt at a refund went under one idempotency key, and Stripe keeps an error it
    answered under its key and replays it: after a decline (a short balance, a disputed charge) every
    retry, the backoff's and the operator's, got the same decline back without Stripe being asked again,
    until the refund was given up. An answered error moves the key on (an unanswered one keeps it: see the
    test below), and the provider is first asked whether a refund was made after all."""
    from tests.bookings.providers import DecliningRefundProvider

    DecliningRefundProvider.reset()
    DecliningRefundProvider.declines = 1
    booking = paid_then_cancelled(client, package, settings, "DecliningRefundProvider")
    checkout = checkout_of(booking)
    assert (checkout.refund_state, checkout.refund_attempts, checkout.refund_key_round) == ("failed", 1, 1)
    Checkout.objects.filter(pk=checkout.pk).update(next_retry_at=Now())
    call_command("retry_refunds", stdout=io.StringIO())
    first = f"lockstep-refund-{checkout.pk}"
    assert DecliningRefundProvider.keys == [first, f"{first}-1"]
    assert DecliningRefundProvider.lookups == [booking.pk]  # asked first, under the new key
    assert checkout_of(booking).refund_state == "succeeded"
    booking.refresh_from_db()
    assert booking.status == "refunded"


def test_every_refund_call_carries_the_same_idempotency_key(client, package, settings, recording_provider):
    from tests.bookings.providers import LostAnswerRefundProvider

    LostAnswerRefundProvider.reset()
    booking = paid_then_cancelled(client, package, settings, "LostAnswerRefundProvider")
    checkout = checkout_of(booking)
    assert checkout.refund_state == "failed" and checkout.refund_attempts == 1
    settings.PAYMENT_PROVIDER = "tests.bookings.providers.RecordingProvider"
    Checkout.objects.filter(pk=checkout.pk).update(next_retry_at=Now())
    call_command("retry_refunds", stdout=io.StringIO())
    keys = LostAnswerRefundProvider.keys + recording_provider.keys
    assert keys == [f"lockstep-refund-{checkout.pk}"] * 2
    # the provider replayed the first refund for the same key: one refund made, recorded once
    assert (
        checkout_of(booking).provider_refund_id
        == SandboxProvider._by_key[(SandboxProvider._payment(checkout), keys[0])].id
    )
    assert status_of(booking) == "refunded"


def test_refund_retries_back_off_exponentially_then_wait_for_an_operator(client, package, settings, admin_client):
    settings.REFUND_RETRY_BASE = timedelta(minutes=1)
    settings.REFUND_RETRY_CAP = timedelta(minutes=5)
    settings.REFUND_MAX_ATTEMPTS = 5
    booking = paid_then_cancelled(client, package, settings, "RefundDownProvider")
    delays = []
    for attempt in range(1, 6):
        row = (
            Checkout.objects.filter(booking=booking)
            .values("refund_state", "refund_attempts", "next_retry_at", "updated_at")
            .get()
        )
        assert row["refund_attempts"] == attempt
        if attempt < 5:
            assert row["refund_state"] == "failed"
            delays.append(round((row["next_retry_at"] - row["updated_at"]).total_seconds() / 60))
            assert not retry_refund(booking.pk)  # not due yet: the claim refuses
            Checkout.objects.filter(booking=booking).update(next_retry_at=Now())
            assert call_command("retry_refunds", stdout=io.StringIO()) is None
        else:
            assert (row["refund_state"], row["next_retry_at"]) == ("exhausted", None)
    assert delays == [1, 2, 4, 5]  # base * 2**(n-1), capped
    out, err = io.StringIO(), io.StringIO()
    call_command("retry_refunds", stdout=out, stderr=err)
    assert "Refunds retried: 0" in out.getvalue() and "waiting for an operator: 1" in err.getvalue()
    listed = admin_client.get("/admin/bookings/booking/?checkout__refund_state=exhausted")
    assert f">{booking.pk}<" in listed.content.decode()
    settings.PAYMENT_PROVIDER = "sandbox"  # the provider is back; an operator retries explicitly
    admin_client.post(
        "/admin/bookings/booking/", {"action": "retry_refund_selected", "apply": "1", "_selected_action": [booking.pk]}
    )
    assert status_of(booking) == "refunded" and checkout_of(booking).refund_state == "succeeded"


def test_a_refund_retried_past_the_idempotency_window_is_looked_up_not_made_twice(
    client, package, settings, recording_provider
):
    from tests.bookings.providers import LostAnswerRefundProvider

    LostAnswerRefundProvider.reset()
    booking = paid_then_cancelled(client, package, settings, "LostAnswerRefundProvider")
    assert len(LostAnswerRefundProvider.refunds) == 1  # made, but the answer was lost
    Checkout.objects.filter(booking=booking).update(
        refund_requested_at=Now() - timedelta(hours=25), next_retry_at=Now()
    )
    settings.PAYMENT_PROVIDER = "tests.bookings.providers.RecordingProvider"
    call_command("retry_refunds", stdout=io.StringIO())
    assert recording_provider.lookups == [booking.pk] and recording_provider.refunds == []
    assert status_of(booking) == "refunded"
    assert checkout_of(booking).provider_refund_id.startswith("re_sandbox_")


def test_a_refund_retried_within_the_window_is_not_looked_up(client, package, settings, recording_provider):
    booking = paid_then_cancelled(client, package, settings, "RefundDownProvider")
    Checkout.objects.filter(booking=booking).update(next_retry_at=Now())
    settings.PAYMENT_PROVIDER = "tests.bookings.providers.RecordingProvider"
    call_command("retry_refunds", stdout=io.StringIO())
    assert recording_provider.lookups == [] and recording_provider.refunds == [booking.pk]


def test_cancelling_a_held_booking_expires_its_provider_session(client, package, recording_provider):
    booking = book(package)
    cancel_booking(booking.pk)
    assert recording_provider.expired == [booking.pk]
    assert checkout_of(booking).state == "expired" and status_of(booking) == "cancelled"
    page = Client().get(f"/sandbox/checkout/{session(booking)}").content.decode()
    assert 'name="pay"' not in page  # no longer payable


def test_a_session_that_could_not_be_expired_and_still_gets_paid_is_refunded_once(client, package, settings, caplog):
    from tests.bookings.providers import ExpireDownProvider

    ExpireDownProvider.reset()
    settings.PAYMENT_PROVIDER = "tests.bookings.providers.ExpireDownProvider"
    booking = book(package)
    with caplog.at_level(logging.WARNING, logger="bookings.services"):
        assert cancel_booking(booking.pk).status == "cancelled"  # not fatal
    assert "could not expire checkout" in caplog.text
    payload = completed_event(session(booking))
    assert result_of(client, payload) == "refund_pending"
    deliver(client, payload)
    assert result_of(client, completed_event(session(booking))) == "unchanged"  # another delivery id
    assert status_of(booking) == "refunded" and ExpireDownProvider.refunds == [booking.pk]


# --- 7. the sandbox page ---------------------------------------------------------------


@pytest.mark.parametrize(
    "settle,status,state", [("succeed", "confirmed", "completed"), ("fail", "expired", "payment_failed")]
)
def test_sandbox_pay_later_then_settle(anon_client, tenant, settle, status, state):
    package = PackageFactory(tenant=tenant)
    body = {"package": package.pk, "date": future().isoformat(), "customer": {"name": "Ann", "email": "a@example.com"}}
    created = anon_client.post("/api/public/acme/checkouts", body, format="json").json()
    browser = Client(enforce_csrf_checks=True)
    path = created["checkout"]["url"].removeprefix("http://127.0.0.1:8000")
    page = browser.get(path).content.decode()
    assert 'name="pay"' in page and 'name="pay_later"' in page and 'name="cancel"' in page
    later = press(browser, page, "pay_later").content.decode()
    assert "payment_pending" in later and 'name="succeed"' in later and 'name="fail"' in later
    assert 'name="pay"' not in later
    done = press(browser, later, settle)
    assert done.status_code == 200
    booking = Booking.objects.get(pk=created["booking"]["id"])
    assert (booking.status, booking.checkout.state) == (status, state)
    assert 'action="' not in done.content.decode().split("<dl>")[1]
