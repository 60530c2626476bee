from datetime import timedelta
from decimal import Decimal

import pytest
from django.db.models.functions import Now

from bookings.models import Booking, Package
from tests.bookings.factories import PackageFactory, book, future
from tests.bookings.test_webhooks import completed_event, deliver
from tests.refusals import assert_error


def checkout_body(package_, day=None, **overrides):
    body = {
        "package": package_.pk,
        "date": (day or future()).isoformat(),
        "customer": {"name": "Ann", "email": "ann@example.com"},
    }
    body.update(overrides)
    return body


@pytest.fixture
def package(tenant):
    return PackageFactory(tenant=tenant, name="Cruise", price=Decimal("450.00"), daily_capacity=1)


# --- public ------------------------------------------------------------------


def test_public_packages_lists_active_packages_only(anon_client, package, tenant, other_tenant):
    PackageFactory(tenant=tenant, is_active=False)
    PackageFactory(tenant=other_tenant)
    response = anon_client.get("/api/public/acme/packages")
    assert response.status_code == 200
    assert response.json() == [
        {"id": package.pk, "name": "Cruise", "price": "450.00", "currency": "USD", "daily_capacity": 1}
    ]
    assert_error(anon_client.get("/api/public/nobody/packages"), 404, "not_found")


def test_checkout_holds_the_date_and_opens_a_sandbox_checkout(anon_client, package):
    response = anon_client.post("/api/public/acme/checkouts", checkout_body(package), format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    booking = Booking.objects.get()
    assert body["booking"]["id"] == booking.pk and body["booking"]["status"] == "held"
    assert body["booking"]["hold_expires_at"]
    assert body["checkout"]["id"].startswith("cs_sandbox_")
    assert body["checkout"]["url"] == f"http://127.0.0.1:8000/sandbox/checkout/{body['checkout']['id']}"


def test_full_date_is_409_date_unavailable(anon_client, package):
    assert anon_client.post("/api/public/acme/checkouts", checkout_body(package), format="json").status_code == 201
    error = assert_error(
        anon_client.post("/api/public/acme/checkouts", checkout_body(package), format="json"), 409, "date_unavailable"
    )
    assert "fully booked" in error["message"]


def test_a_checkout_refused_before_it_acted_leaves_its_idempotency_key_for_the_corrected_body(anon_client, package):
    """Two-phase keys too (a checkout): a customer's mistyped e-mail, 400 invalid_input, keeps no answer, so the
    corrected checkout with the same key holds the date (it was 422 idempotency_key_reused for 24 h)."""
    key = {"HTTP_IDEMPOTENCY_KEY": "chk-typo"}
    mistyped = checkout_body(package, customer={"name": "Ann", "email": "ann@"})
    assert_error(anon_client.post("/api/public/acme/checkouts", mistyped, format="json", **key), 400, "invalid_input")
    corrected = anon_client.post("/api/public/acme/checkouts", checkout_body(package), format="json", **key)
    assert corrected.status_code == 201, corrected.content
    assert Booking.objects.filter(package=package).count() == 1


def test_checkout_with_idempotency_key_replays_the_first_answer(anon_client, package):
    first = anon_client.post(
        "/api/public/acme/checkouts", checkout_body(package), format="json", HTTP_IDEMPOTENCY_KEY="k1"
    )
    second = anon_client.post(
        "/api/public/acme/checkouts", checkout_body(package), format="json", HTTP_IDEMPOTENCY_KEY="k1"
    )
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json() and second["Idempotent-Replayed"] == "true"
    assert Booking.objects.count() == 1


def test_provider_down_is_503_and_the_date_stays_free(anon_client, package, settings):
    settings.PAYMENT_PROVIDER = "tests.bookings.providers.DownProvider"
    assert_error(
        anon_client.post("/api/public/acme/checkouts", checkout_body(package), format="json"),
        503,
        "payment_provider_unavailable",
    )
    assert Booking.objects.get().status == "expired"
    settings.PAYMENT_PROVIDER = "sandbox"
    assert anon_client.post("/api/public/acme/checkouts", checkout_body(package), format="json").status_code == 201


@pytest.mark.parametrize(
    "overrides, status, code",
    [
        ({"date": "2026-02-30"}, 400, "invalid_input"),
        ({"date": "30/12/2026"}, 400, "invalid_input"),
        ({"date": "2020-01-01"}, 400, "date_in_past"),
        ({"date": None}, 400, "invalid_input"),
        ({"package": "abc"}, 400, "invalid_input"),
        ({"package": 10**30}, 400, "invalid_input"),
        ({"package": -1}, 400, "invalid_input"),
        ({"package": 999999}, 404, "package_not_found"),
        ({"customer": {"name": "A", "email": "not-an-email"}}, 400, "invalid_input"),
        ({"customer": "Ann"}, 400, "invalid_input"),
        ({"customer": {"name": "", "email": "a@example.com"}}, 400, "invalid_input"),
    ],
)
def test_checkout_bad_input_is_a_stable_400_or_404(anon_client, package, overrides, status, code):
    response = anon_client.post("/api/public/acme/checkouts", checkout_body(package, **overrides), format="json")
    assert_error(response, status, code)
    assert not Booking.objects.exists()


def test_checkout_for_inactive_or_other_tenants_package_is_404(anon_client, tenant, other_tenant):
    for package in (PackageFactory(tenant=tenant, is_active=False), PackageFactory(tenant=other_tenant)):
        assert_error(
            anon_client.post("/api/public/acme/checkouts", checkout_body(package), format="json"),
            404,
            "package_not_found",
        )


def test_availability_counts_confirmed_and_live_holds_only(anon_client, tenant):
    cruise = PackageFactory(tenant=tenant, daily_capacity=1)
    safari = PackageFactory(tenant=tenant, daily_capacity=3)
    day = future()
    for package in (cruise, safari, safari):
        anon_client.post("/api/public/acme/checkouts", checkout_body(package, day), format="json")
    stale = Booking.objects.filter(package=safari).first()
    Booking.objects.filter(pk=stale.pk).update(hold_expires_at=Now() - timedelta(seconds=1))
    url = f"/api/public/acme/availability?start={day.isoformat()}&end={(day + timedelta(days=1)).isoformat()}"
    assert anon_client.get(url).json() == [
        {"date": day.isoformat(), "remaining": 2},
        {"date": (day + timedelta(days=1)).isoformat(), "remaining": 4},
    ]
    assert anon_client.get(url + f"&package={safari.pk}").json()[0] == {"date": day.isoformat(), "remaining": 2}
    assert anon_client.get(url + f"&package={cruise.pk}").json()[0] == {"date": day.isoformat(), "remaining": 0}


def test_availability_of_past_dates_is_zero(anon_client, package):
    yesterday = future(-1).isoformat()
    assert anon_client.get(f"/api/public/acme/availability?start={yesterday}&end={yesterday}").json() == [
        {"date": yesterday, "remaining": 0}
    ]


@pytest.mark.parametrize(
    "query, status, code",
    [
        ("start=2027-01-01&end=2028-01-02", 400, "date_range_invalid"),
        ("start=2027-01-02&end=2027-01-01", 400, "date_range_invalid"),
        ("start=2027-02-30&end=2027-03-01", 400, "invalid_input"),
        ("start=2027-01-01", 400, "invalid_input"),
        ("", 400, "invalid_input"),
        ("start=2027-01-01&end=2027-01-02&package=abc", 400, "invalid_input"),
        ("start=2027-01-01&end=2027-01-02&package=99999999999999999999999", 400, "invalid_input"),
        ("start=2027-01-01&end=2027-01-02&package=999999", 404, "package_not_found"),
    ],
)
def test_availability_bad_input(anon_client, package, query, status, code):
    assert_error(anon_client.get(f"/api/public/acme/availability?{query}"), status, code)


def test_availability_allows_366_days(anon_client, package):
    response = anon_client.get("/api/public/acme/availability?start=2027-01-01&end=2028-01-01")
    assert response.status_code == 200 and len(response.json()) == 366


# --- staff -------------------------------------------------------------------


def test_package_crud(api_client, tenant):
    created = api_client.post(
        "/api/t/acme/packages",
        {"name": "Boat", "price": "99.90", "currency": "EUR", "daily_capacity": 3},
        format="json",
    )
    assert created.status_code == 201, created.content
    pk = created.json()["id"]
    assert created.json()["active"] is True and created.json()["price"] == "99.90"
    assert api_client.get("/api/t/acme/packages").json()["results"][0]["name"] == "Boat"
    patched = api_client.patch(f"/api/t/acme/packages/{pk}", {"active": False, "version": 1}, format="json")
    assert patched.status_code == 200 and patched.json()["active"] is False
    assert api_client.delete(f"/api/t/acme/packages/{pk}").status_code == 204
    assert_error(api_client.get(f"/api/t/acme/packages/{pk}"), 404, "package_not_found")


@pytest.mark.parametrize(
    "body",
    [
        {"name": "X", "price": "NaN"},
        {"name": "X", "price": "Infinity"},
        {"name": "X", "price": "1e20"},
        {"name": "X", "price": "-1"},
        {"name": "X", "price": "1.0001"},
        {"name": "X", "price": "10", "daily_capacity": 0},
        {"name": "X", "price": "10", "daily_capacity": 10**12},
        {"name": "X", "price": "10", "currency": "USDX"},
        {"name": "", "price": "10"},
        {"price": "10"},
    ],
)
def test_package_bad_input_is_400(api_client, tenant, body):
    assert_error(api_client.post("/api/t/acme/packages", body, format="json"), 400, "invalid_input")
    assert not Package.objects.exists()


@pytest.mark.parametrize(
    "body,code",
    [
        ({"name": "X", "price": "1.001"}, "amount_precision"),  # USD has cents
        ({"name": "X", "price": "10", "currency": "usd"}, "unknown_currency"),
        ({"name": "X", "price": "10", "currency": "ABC"}, "unknown_currency"),
        ({"name": "X", "price": "10", "currency": "XXX"}, "unknown_currency"),  # ISO 4217, but not money
        # ISO 4217 once, legal tender nowhere today (no provider charges in it): withdrawn, replaced, a fund
        ({"name": "X", "price": "10", "currency": "DEM"}, "unknown_currency"),
        ({"name": "X", "price": "10", "currency": "HRK"}, "unknown_currency"),
        ({"name": "X", "price": "10", "currency": "CLF"}, "unknown_currency"),
        ({"name": "X", "price": "1500.5", "currency": "JPY"}, "amount_precision"),
        ({"name": "X", "price": "1.255", "currency": "KWD"}, "amount_precision"),  # Stripe: last digit 0
        # more than a processor charges at once: eight digits of its unit
        ({"name": "X", "price": "1000000.00"}, "amount_too_large"),
        ({"name": "X", "price": "100000000", "currency": "JPY"}, "amount_too_large"),
        ({"name": "X", "price": "100000.000", "currency": "KWD"}, "amount_too_large"),
    ],
)
def test_package_currency_and_price_precision_are_checked(api_client, tenant, body, code):
    assert_error(api_client.post("/api/t/acme/packages", body, format="json"), 400, code)
    assert not Package.objects.exists()


@pytest.mark.parametrize(
    "currency,price,shown", [("USD", "99.9", "99.90"), ("JPY", "1500", "1500"), ("KWD", "12.25", "12.250")]
)
def test_package_prices_are_written_with_their_currency_decimals(api_client, tenant, currency, price, shown):
    created = api_client.post(
        "/api/t/acme/packages", {"name": "P", "price": price, "currency": currency}, format="json"
    )
    assert created.status_code == 201 and created.json()["price"] == shown
    package = Package.objects.get()
    changed = api_client.patch(
        f"/api/t/acme/packages/{package.pk}", {"currency": "JPY", "version": package.version}, format="json"
    )
    if currency == "JPY":
        assert changed.status_code == 200
    else:  # the kept price has decimals JPY does not: refused, nothing written
        assert_error(changed, 400, "amount_precision")
        assert Package.objects.get().currency == currency


def test_package_with_bookings_cannot_be_deleted(api_client, anon_client, package):
    anon_client.post("/api/public/acme/checkouts", checkout_body(package), format="json")
    assert_error(api_client.delete(f"/api/t/acme/packages/{package.pk}"), 409, "package_in_use")


def test_staff_endpoints_are_404_for_outsiders_and_401_for_anonymous(outsider_client, anon_client, package):
    assert_error(outsider_client.get("/api/t/acme/packages"), 404, "not_found")
    assert_error(outsider_client.get("/api/t/acme/bookings"), 404, "not_found")
    assert_error(anon_client.get("/api/t/acme/bookings"), 401, "not_authenticated")


def test_booking_list_filters_detail_and_cancel(api_client, anon_client, client, tenant, package):
    other = PackageFactory(tenant=tenant, daily_capacity=2)
    day = future()
    held = anon_client.post("/api/public/acme/checkouts", checkout_body(package, day), format="json").json()
    paid = anon_client.post("/api/public/acme/checkouts", checkout_body(other, future(31)), format="json").json()
    deliver(client, completed_event(paid["checkout"]["id"]))

    listing = api_client.get(f"/api/t/acme/bookings?date={day.isoformat()}").json()
    assert [b["id"] for b in listing["results"]] == [held["booking"]["id"]]
    assert [b["id"] for b in api_client.get("/api/t/acme/bookings?status=confirmed").json()["results"]] == [
        paid["booking"]["id"]
    ]
    assert api_client.get(f"/api/t/acme/bookings?package={other.pk}").json()["count"] == 1
    assert_error(api_client.get("/api/t/acme/bookings?status=bogus"), 400, "invalid_input")
    assert_error(api_client.get("/api/t/acme/bookings?date=2026-13-01"), 400, "invalid_input")

    detail = api_client.get(f"/api/t/acme/bookings/{paid['booking']['id']}").json()
    assert detail["status"] == "confirmed" and detail["checkout"]["state"] == "completed"

    cancelled = api_client.post(f"/api/t/acme/bookings/{held['booking']['id']}/cancel", format="json")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert_error(
        api_client.post(f"/api/t/acme/bookings/{held['booking']['id']}/cancel", format="json"),
        409,
        "booking_not_cancellable",
    )
    refunded = api_client.post(f"/api/t/acme/bookings/{paid['booking']['id']}/cancel", format="json").json()
    assert refunded["status"] == "refunded" and refunded["checkout"]["refund_state"] == "succeeded"


def test_a_cancel_at_the_version_shown_is_refused_once_the_booking_was_paid_since(
    api_client, anon_client, client, package
):
    """The storefront showed "cancel your hold (nothing paid)"; the payment lands first: no unseen refund."""
    held = anon_client.post("/api/public/acme/checkouts", checkout_body(package, future()), format="json").json()
    path = f"/api/t/acme/bookings/{held['booking']['id']}"
    shown = api_client.get(path).json()
    assert shown["status"] == "held" and shown["version"] >= 1
    deliver(client, completed_event(held["checkout"]["id"], amount_total=45000))
    refused = api_client.post(f"{path}/cancel", {"version": shown["version"]}, format="json")
    assert_error(refused, 409, "version_conflict")
    now = api_client.get(path).json()
    assert now["status"] == "confirmed" and refused.json()["error"]["details"] == {"current": now["version"]}
    assert_error(api_client.post(f"{path}/cancel", {"version": 0}, format="json"), 400, "invalid_input")
    assert_error(api_client.post(f"{path}/cancel", {"versoin": now["version"]}, format="json"), 400, "invalid_input")
    refunded = api_client.post(f"{path}/cancel", {"version": now["version"]}, format="json").json()
    assert refunded["status"] == "refunded" and refunded["version"] > now["version"]


def test_booking_ids_of_other_tenants_unknown_and_malformed(api_client, other_tenant, tenant):
    foreign = PackageFactory(tenant=other_tenant)
    from bookings.services import start_checkout

    booking = start_checkout(
        tenant=other_tenant, package_id=foreign.pk, date=future(), customer_name="X", customer_email="x@example.com"
    )
    assert_error(api_client.get(f"/api/t/acme/bookings/{booking.pk}"), 404, "booking_not_found")
    assert_error(api_client.post(f"/api/t/acme/bookings/{booking.pk}/cancel"), 404, "booking_not_found")
    assert_error(api_client.get("/api/t/acme/bookings/99999999999999999999999"), 404, "booking_not_found")
    assert_error(api_client.get("/api/t/acme/bookings/abc"), 404, "not_found")
    assert Booking.objects.get(pk=booking.pk).status == "held"


def test_refusals_speak_arabic_when_asked(anon_client, package):
    anon_client.post("/api/public/acme/checkouts", checkout_body(package), format="json")
    error = assert_error(
        anon_client.post(
            "/api/public/acme/checkouts", checkout_body(package), format="json", HTTP_ACCEPT_LANGUAGE="ar"
        ),
        409,
        "date_unavailable",
    )
    assert error["message"] == "هذا التاريخ محجوز بالكامل لهذه الباقة."


@pytest.mark.parametrize("language", ["en", "ar"])
def test_a_refusals_details_carry_the_status_itself_in_any_language(api_client, package, language):
    """``details`` are for programs: the status's value, never its label in the request's language."""
    held = book(package)
    Booking.objects.release(held.pk)
    response = api_client.post(
        f"/api/t/acme/bookings/{held.pk}/cancel", {}, format="json", HTTP_ACCEPT_LANGUAGE=language
    )
    error = assert_error(response, 409, "booking_not_cancellable")
    assert error["details"] == {"status": "expired"}
    assert ("expired" in error["message"]) == (language == "en")  # the message shows the label, translated


@pytest.mark.parametrize("currency, largest", [("USD", "999999.99"), ("JPY", "99999999"), ("KWD", "99999.990")])
def test_a_package_may_cost_what_a_processor_charges_at_once_and_no_more(api_client, tenant, currency, largest):
    created = api_client.post(
        "/api/t/acme/packages", {"name": "P", "price": largest, "currency": currency}, format="json"
    )
    assert created.status_code == 201, created.content
    package = Package.objects.get()
    changed = api_client.patch(
        f"/api/t/acme/packages/{package.pk}",
        {"price": str(Decimal(largest) * 10), "version": package.version},
        format="json",
    )
    error = assert_error(changed, 400, "amount_too_large")
    assert error["details"] == {"currency": currency, "maximum": largest}
    assert Package.objects.get().price == Decimal(largest)


def test_a_checkout_of_a_package_priced_above_the_ceiling_before_it_is_refused_before_any_hold(anon_client, package):
    """A price stored before the rule (a raw UPDATE here) is refused by the hold, before it writes: 400, not a
    hold the provider then refuses (503) and a date blocked meanwhile."""
    Package.objects.filter(pk=package.pk).update(price=Decimal("1000000.00"))
    response = anon_client.post("/api/public/acme/checkouts", checkout_body(package), format="json")
    assert_error(response, 400, "amount_too_large")
    assert not Booking.objects.exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("method", ["patch", "delete"])
def test_an_edit_of_another_tenants_package_is_not_found_without_waiting_for_its_lock(api_client, other_tenant, method):
    """Regression: the package's lock was taken before its tenant was checked: an edit sent with another
    tenant's package id queued for that lock, holding up their checkouts, and answered 409 resource_locked
    (telling the id exists) while they held it."""
    from core.db import LockNamespace
    from tests.races import advisory_locked, lock_timeout

    theirs = PackageFactory(tenant=other_tenant)
    with advisory_locked(LockNamespace.BOOKING_PACKAGE, theirs.pk), lock_timeout(300):
        body = {"name": "Mine", "version": 1}
        answer = getattr(api_client, method)(f"/api/t/acme/packages/{theirs.pk}", body, format="json")
    assert_error(answer, 404, "package_not_found")
    assert Package.objects.get(pk=theirs.pk).name == theirs.name


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("held", ["package", "date"])
def test_a_public_checkout_of_another_tenants_package_is_not_found_without_waiting_for_its_locks(
    anon_client, tenant, other_tenant, held
):
    """Regression: the public checkout took the package's and the date's locks before its tenant was checked:
    anyone could send another shop's package id (they are sequential), queue for and hold the locks that decide
    that shop's dates, and read 409 resource_locked (the id exists, and a sale is under way) while they were
    held. Now no lock is taken for another tenant's package: 404 at once, whoever holds them."""
    from core.db import LockNamespace
    from tests.races import advisory_locked, lock_timeout

    theirs = PackageFactory(tenant=other_tenant)
    body = checkout_body(theirs)
    lock = (
        (LockNamespace.BOOKING_PACKAGE, theirs.pk)
        if held == "package"
        else (LockNamespace.BOOKING_DATE, theirs.pk, body["date"])
    )
    with advisory_locked(*lock), lock_timeout(300):
        answer = anon_client.post("/api/public/acme/checkouts", body, format="json")
    assert_error(answer, 404, "package_not_found")
    assert not Booking.objects.filter(package=theirs).exists()
