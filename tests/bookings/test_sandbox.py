"""End to end through the sandbox provider's page, CSRF enforced like a browser."""

import re

import pytest
from django.test import Client

from bookings.models import Booking, PaymentEvent
from tests.bookings.factories import PackageFactory, future


@pytest.fixture
def browser():
    return Client(enforce_csrf_checks=True)


def start(anon_client, tenant):
    package = PackageFactory(tenant=tenant)
    body = {"package": package.pk, "date": future().isoformat(), "customer": {"name": "Ann", "email": "a@example.com"}}
    return anon_client.post("/api/public/acme/checkouts", body, format="json").json()


def press(browser, page, button):
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    action = re.search(rf'<form method="post" action="([^"]+/{button})"', page).group(1)
    return browser.post(action, {"csrfmiddlewaretoken": token})


def test_checkout_then_pay_confirms_the_booking(anon_client, browser, tenant):
    created = start(anon_client, tenant)
    page = browser.get(created["checkout"]["url"].removeprefix("http://127.0.0.1:8000"))
    assert page.status_code == 200
    html = page.content.decode()
    assert "Pay" in html and "Cancel" in html and "Held" in html.title()
    result = press(browser, html, "pay")
    assert result.status_code == 200
    assert "confirmed" in result.content.decode()
    booking = Booking.objects.get(pk=created["booking"]["id"])
    assert booking.status == Booking.Status.CONFIRMED
    assert PaymentEvent.objects.get().result == "confirmed"
    assert 'action="' not in result.content.decode().split("<dl>")[1]  # no buttons once paid


def test_cancel_releases_the_hold(anon_client, browser, tenant):
    created = start(anon_client, tenant)
    html = browser.get(created["checkout"]["url"].removeprefix("http://127.0.0.1:8000")).content.decode()
    assert press(browser, html, "cancel").status_code == 200
    assert Booking.objects.get(pk=created["booking"]["id"]).status == Booking.Status.EXPIRED


def test_post_without_csrf_token_is_refused(anon_client, browser, tenant):
    created = start(anon_client, tenant)
    path = created["checkout"]["url"].removeprefix("http://127.0.0.1:8000")
    assert browser.post(path + "/pay").status_code == 403
    assert Booking.objects.get(pk=created["booking"]["id"]).status == Booking.Status.HELD


def test_unknown_checkout_and_action_are_404(browser, db):
    assert browser.get("/sandbox/checkout/cs_sandbox_nope").status_code == 404
    assert Client().post("/sandbox/checkout/cs_sandbox_nope/explode").status_code == 404


def test_a_refused_delivery_is_shown_on_the_page_not_a_500(anon_client, browser, tenant, monkeypatch):
    """Regression: a LockContended from the webhook path escaped the sandbox view as a 500."""
    from bookings import sandbox_views
    from core.exceptions import LockContended

    def busy(checkout, event_type, **kwargs):
        raise LockContended()

    created = start(anon_client, tenant)
    html = browser.get(created["checkout"]["url"].removeprefix("http://127.0.0.1:8000")).content.decode()
    monkeypatch.setattr(sandbox_views, "sandbox_deliver", busy)
    response = press(browser, html, "pay")
    assert response.status_code == 409
    assert "being changed by another request" in response.content.decode()
    assert 'name="pay"' in response.content.decode()  # still open: the customer can press again
    assert Booking.objects.get(pk=created["booking"]["id"]).status == Booking.Status.HELD


def test_a_button_the_checkout_no_longer_offers_sends_nothing(anon_client, browser, tenant):
    """Regression: the page acted on any checkout: "pay" on an expired session confirmed a booking."""
    created = start(anon_client, tenant)
    html = browser.get(created["checkout"]["url"].removeprefix("http://127.0.0.1:8000")).content.decode()
    assert press(browser, html, "cancel").status_code == 200  # expired: the page offers nothing now
    refused = press(browser, html, "pay")  # the page as it was before, still open in another tab
    assert refused.status_code == 409 and "no longer offers that" in refused.content.decode()
    assert Booking.objects.get(pk=created["booking"]["id"]).status == Booking.Status.EXPIRED
    assert PaymentEvent.objects.count() == 1  # the cancel's only


def test_no_sandbox_page_where_stripe_takes_the_payments(anon_client, browser, tenant, settings):
    """Regression: a pay link a sandbox e-mailed (staging promoted, a site before its Stripe keys) still
    confirmed the booking, unpaid, once Stripe was the provider."""
    created = start(anon_client, tenant)
    path = created["checkout"]["url"].removeprefix("http://127.0.0.1:8000")
    html = browser.get(path).content.decode()
    settings.PAYMENT_PROVIDER, settings.STRIPE_API_KEY, settings.PAYMENT_SANDBOX_ALLOWED = "", "sk_test_x", False
    assert browser.get(path).status_code == 404
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html).group(1)
    assert browser.post(path + "/pay", {"csrfmiddlewaretoken": token}).status_code == 404
    assert Booking.objects.get(pk=created["booking"]["id"]).status == Booking.Status.HELD
    settings.PAYMENT_SANDBOX_ALLOWED = True  # a staging site that keeps the sandbox beside Stripe
    assert browser.get(path).status_code == 200


@pytest.mark.parametrize(
    "method,path", [("get", "/sandbox/checkout/cs_sandbox_%00x"), ("post", "/sandbox/checkout/cs_sandbox_%00x/pay")]
)
def test_a_sandbox_checkout_id_that_is_not_one_is_404_never_sent_to_the_database(db, method, path):
    """A NUL in the id reached PostgreSQL (text refuses it): a 500."""
    assert getattr(Client(raise_request_exception=False), method)(path).status_code == 404
