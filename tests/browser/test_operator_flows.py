"""An operator and a customer in a real browser (headless Chromium) against a live server."""

import json
import urllib.request
from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.utils import translation

from bookings.models import Booking, Package
from core.guards import database_clock
from profiles.exceptions import ParentDeleted
from profiles.models import Profile, ProfileAuditLog
from tests.browser.conftest import screenshot
from tests.factories import TenantFactory

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "operator-password"


@pytest.fixture
def operator():
    return get_user_model().objects.create_superuser("operator", "operator@example.com", PASSWORD)


def log_in(page, live_server):
    page.goto(f"{live_server.url}/admin/login/")
    page.fill("#id_username", "operator")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_selector("#site-name")


def test_operator_undoes_a_profile_update_and_reads_the_results_in_arabic(browser_page, live_server, operator):
    tenant = TenantFactory(slug="family")
    old_father = Profile.objects.create_profile(tenant=tenant, first_name="Karim", sex="male")
    new_father = Profile.objects.create_profile(tenant=tenant, first_name="Sami", sex="male")
    child = Profile.objects.create_profile(tenant=tenant, first_name="Nour", sex="female", father=old_father)
    child = Profile.objects.update_profile(child.pk, tenant=tenant, version=child.version, father=new_father)
    renamed = Profile.objects.update_profile(child.pk, tenant=tenant, version=child.version, last_name="Haddad")
    father_change = ProfileAuditLog.objects.get(profile=child, action="update", new_data__has_key="father")
    rename = ProfileAuditLog.objects.get(profile=child, action="update", new_data__has_key="last_name")
    # The father the first undo would restore is deleted meanwhile: that undo must be refused.
    Profile.objects.soft_delete(old_father.pk, tenant=tenant, version=old_father.version)
    assert renamed.last_name == "Haddad"

    page = browser_page(locale="ar")
    log_in(page, live_server)
    assert page.locator("html").get_attribute("dir") == "rtl"
    page.goto(f"{live_server.url}/admin/profiles/profileauditlog/")
    page.check(f"input[name=_selected_action][value='{father_change.pk}']")
    page.check(f"input[name=_selected_action][value='{rename.pk}']")
    page.select_option("select[name=action]", "undo_selected")
    page.click("button[name=index]")
    page.fill("textarea[name=reason]", "طلب العائلة")
    screenshot(page, "admin-undo-reason-ar")
    page.click("input[type=submit]")
    page.wait_for_selector("ul.messagelist")
    screenshot(page, "admin-undo-result-ar")

    messages = page.inner_text("ul.messagelist")
    with translation.override("ar"):
        refused = ParentDeleted(parent="father").render()
    assert refused in messages
    assert f"#{rename.pk}" in messages
    rename.refresh_from_db()
    father_change.refresh_from_db()
    assert rename.undone_at is not None and rename.undo_reason == "طلب العائلة"
    assert father_change.undone_at is None
    child.refresh_from_db()
    assert child.father_id == new_father.pk and child.last_name == ""


def _post_json(url, body):
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=15) as response:
        return response.status, json.loads(response.read())


def test_customer_pays_on_the_sandbox_page_and_the_admin_shows_the_booking_confirmed(
    browser_page, live_server, operator, settings
):
    settings.PUBLIC_BASE_URL = live_server.url
    tenant = TenantFactory(slug="events")
    package = Package.objects.create(tenant=tenant, name="Garden wedding", price=Decimal("1500.00"), daily_capacity=1)
    date = database_clock().date() + timedelta(days=45)

    status, created = _post_json(
        f"{live_server.url}/api/public/events/checkouts",
        {"package": package.pk, "date": date.isoformat(), "customer": {"name": "Maya", "email": "maya@example.com"}},
    )
    assert status == 201
    assert created["booking"]["status"] == "held"

    customer = browser_page(locale="en")
    customer.goto(created["checkout"]["url"])
    assert "Garden wedding" in customer.inner_text("body")
    screenshot(customer, "sandbox-checkout")
    customer.click("button[name=pay]")
    customer.wait_for_selector("#result")
    screenshot(customer, "sandbox-paid")

    booking = Booking.objects.get(pk=created["booking"]["id"])
    assert booking.status == Booking.Status.CONFIRMED

    page = browser_page(locale="en")
    log_in(page, live_server)
    page.goto(f"{live_server.url}/admin/bookings/booking/?status__exact=confirmed")
    row = page.locator("#result_list tbody tr").filter(has_text="Maya")
    assert row.count() == 1
    assert "confirmed" in row.inner_text().lower()
    screenshot(page, "admin-booking-confirmed")


def test_a_scoped_manager_cancels_a_paid_booking_through_the_confirmation_page(browser_page, live_server):
    """A staff user of one shop sees only its bookings, and a refund happens only once confirmed."""
    from bookings.services import sandbox_deliver, start_checkout
    from core.models import Membership

    shop, other = TenantFactory(slug="shop"), TenantFactory(slug="elsewhere")
    manager = get_user_model().objects.create_user("operator", password=PASSWORD, is_staff=True)
    Membership.objects.create(tenant=shop, user=manager, role=Membership.Role.STAFF)
    day = database_clock().date() + timedelta(days=30)
    bookings = {}
    for tenant, name in ((shop, "Maya"), (other, "Omar")):
        package = Package.objects.create(
            tenant=tenant, name=f"{name}'s trip", price=Decimal("120.00"), daily_capacity=1
        )
        booking = start_checkout(
            tenant=tenant, package_id=package.pk, date=day, customer_name=name, customer_email=f"{name.lower()}@x.io"
        )
        sandbox_deliver(booking.checkout, "checkout.session.completed")
        bookings[name] = booking

    page = browser_page(locale="en")
    log_in(page, live_server)
    page.goto(f"{live_server.url}/admin/bookings/booking/")
    listed = page.inner_text("#result_list")
    assert "Maya" in listed and "Omar" not in listed  # the other shop's booking is not there
    page.check(f"input[name=_selected_action][value='{bookings['Maya'].pk}']")
    page.select_option("select[name=action]", "cancel_selected")
    page.click("button[name=index]")
    page.wait_for_selector("#action-rows")
    assert "cancelled, 120.00 USD refunded to maya@x.io" in page.inner_text("#action-rows")
    screenshot(page, "admin-cancel-confirmation")
    assert Booking.objects.get(pk=bookings["Maya"].pk).status == Booking.Status.CONFIRMED  # nothing yet
    page.click("input[type=submit]")
    page.wait_for_selector("ul.messagelist")
    screenshot(page, "admin-cancel-result")
    assert f"Booking #{bookings['Maya'].pk}: cancelled, 120.00 USD refunded to maya@x.io." in page.inner_text(
        "ul.messagelist"
    )
    assert Booking.objects.get(pk=bookings["Maya"].pk).status == Booking.Status.REFUNDED
    assert Booking.objects.get(pk=bookings["Omar"].pk).status == Booking.Status.CONFIRMED
    assert page.goto(f"{live_server.url}/admin/bookings/booking/{bookings['Omar'].pk}/change/").status == 404


def test_the_package_calendar_shows_a_month_and_a_date_opens_its_bookings(browser_page, live_server, operator):
    from bookings.services import start_checkout

    tenant = TenantFactory(slug="calendar")
    package = Package.objects.create(tenant=tenant, name="Boat", price=Decimal("80.00"), daily_capacity=2)
    day = database_clock().date() + timedelta(days=40)
    start_checkout(tenant=tenant, package_id=package.pk, date=day, customer_name="Lina", customer_email="l@x.io")

    page = browser_page(locale="en")
    log_in(page, live_server)
    page.goto(f"{live_server.url}/admin/bookings/package/{package.pk}/calendar/?month={day:%Y-%m}")
    cell = page.locator(f"td[data-date='{day:%Y-%m-%d}']")
    assert "0 confirmed, 1 held" in cell.inner_text() and "1 free" in cell.inner_text()
    screenshot(page, "admin-package-calendar")
    cell.locator("a").click()
    page.wait_for_selector("#result_list")
    assert "Lina" in page.inner_text("#result_list")


def test_every_list_fits_a_1366_pixel_laptop_in_both_languages(browser_page, live_server, operator):
    """The columns an operator acts on stay on screen: no list is wider than the window."""
    from django.core.management import call_command

    from bookings.services import sandbox_deliver, start_checkout
    from promos.models import PromoCode

    call_command("seed_demo", "--without-admin", stdout=__import__("io").StringIO())
    demo = TenantFactory._meta.model.objects.get(slug="demo")
    package = Package.objects.filter(tenant=demo).first()
    day = database_clock().date() + timedelta(days=50)
    paid = start_checkout(tenant=demo, package_id=package.pk, date=day, customer_name="Rania", customer_email="r@x.io")
    sandbox_deliver(paid.checkout, "checkout.session.completed")  # a booking and a payment event
    PromoCode.objects.redeem("WELCOME10", tenant=demo, customer="rania", amount="100.00")  # a usage
    lists = [
        "bookings/booking",
        "bookings/package",
        "bookings/paymentevent",
        "promos/promocode",
        "promos/promousage",
        "promos/redemptionsession",
        "profiles/profile",
        "profiles/profileauditlog",
        "proposals/proposal",
    ]
    measured = 0
    for locale in ("en", "ar"):
        page = browser_page(locale=locale)
        page.set_viewport_size({"width": 1366, "height": 768})
        log_in(page, live_server)
        too_wide = {}
        for name in lists:
            page.goto(f"{live_server.url}/admin/{name}/")
            # Django scrolls a wide table inside its box: compare the table with the box, and the page with the window
            table, box, page_width = page.evaluate(
                "[document.querySelector('#result_list')?.scrollWidth ?? 0,"
                " document.querySelector('.results')?.clientWidth ?? 0, document.documentElement.scrollWidth]"
            )
            if table > box or page_width > 1366:
                too_wide[name] = (table, box, page_width)
            measured += bool(table)
        assert not too_wide, (locale, too_wide)
    assert measured == 2 * len(lists), measured  # every list had rows to measure
