"""Package edits and deletes are guarded operations: the manager, the API and the admin form."""

from datetime import timedelta
from decimal import Decimal

import pgtrigger
import pytest
from django.contrib.admin.models import DELETION, LogEntry
from django.db import transaction
from django.db.models.functions import Now
from django.urls import reverse

from bookings import invariants
from bookings.exceptions import CapacityBelowOccupancy, PackageInUse, PackageInvalid, PackageNotFound
from bookings.models import Booking, Package
from core.exceptions import VersionConflict
from tests.bookings.factories import PackageFactory, book, future
from tests.core.test_admin_scope import confirm_delete
from tests.refusals import assert_error


def fresh(package):
    return Package.objects.get(pk=package.pk)


# --- the manager -------------------------------------------------------------------


def test_edit_writes_only_the_given_fields_and_checks_the_version(tenant):
    package = PackageFactory(tenant=tenant, daily_capacity=3, currency="EUR", price=Decimal("10.00"))
    Package.objects.filter(pk=package.pk).update(is_active=False)  # someone deactivated it meanwhile (version 2)
    edited = Package.objects.edit_package(package.pk, tenant=tenant, name="Renamed")  # no version: no check
    assert (edited.name, edited.is_active, edited.currency, edited.daily_capacity) == ("Renamed", False, "EUR", 3)
    assert edited.version == 3
    with pytest.raises(VersionConflict) as stale:
        Package.objects.edit_package(package.pk, tenant=tenant, version=2, is_active=True)
    assert stale.value.params == {"current": 3}
    assert fresh(package).is_active is False
    assert Package.objects.edit_package(package.pk, tenant=tenant, version=3, is_active=True).version == 4


def test_edit_refusals(tenant, other_tenant):
    package = PackageFactory(tenant=tenant)
    with pytest.raises(PackageNotFound):
        Package.objects.edit_package(package.pk, tenant=other_tenant, name="X")
    with pytest.raises(PackageInvalid):
        Package.objects.edit_package(package.pk, tenant=tenant, daily_capacity=0)
    with pytest.raises(ValueError):
        Package.objects.edit_package(package.pk, tenant=tenant, tenant_id=other_tenant.pk)
    assert fresh(package).version == 1


def test_lowering_capacity_below_occupancy_is_refused_naming_the_dates(tenant):
    package = PackageFactory(tenant=tenant, daily_capacity=3)
    crowded = [future(10 + n) for n in range(7)]
    for day in crowded:
        book(package, day), book(package, day)
    book(package, future(40))
    stale = book(package, future(40))
    Booking.objects.filter(pk=stale.pk).update(hold_expires_at=Now() - timedelta(seconds=1))  # does not count
    past = Booking.objects.filter(package=package).first()
    with pytest.raises(CapacityBelowOccupancy) as refused:
        Package.objects.edit_package(package.pk, tenant=tenant, daily_capacity=1, name="Not written")
    error = refused.value
    assert error.code == "capacity_below_occupancy" and error.params["count"] == 7
    assert error.params["dates"] == ", ".join(f"{day.isoformat()} (2)" for day in crowded[:5]) + " (+2)"
    assert crowded[0].isoformat() in error.render()
    assert (fresh(package).daily_capacity, fresh(package).name, fresh(package).version) == (3, package.name, 1)
    assert Package.objects.edit_package(package.pk, tenant=tenant, daily_capacity=2).daily_capacity == 2
    assert past is not None


def test_capacity_crossing_one_recomputes_exclusive_of_live_bookings(tenant):
    package = PackageFactory(tenant=tenant, daily_capacity=1)
    held, paid = book(package, future(5)), book(package, future(6))
    with transaction.atomic():
        Booking.objects.confirm_payment(paid.pk)
    released = book(package, future(7))
    Booking.objects.release(released.pk)
    assert set(Booking.objects.values_list("exclusive", flat=True)) == {True}
    Package.objects.edit_package(package.pk, tenant=tenant, daily_capacity=2)
    flags = dict(Booking.objects.values_list("pk", "exclusive"))
    assert (flags[held.pk], flags[paid.pk], flags[released.pk]) == (False, False, True)  # expired: left alone
    assert invariants.exclusive_follows_capacity(None) == []
    Package.objects.edit_package(package.pk, tenant=tenant, daily_capacity=1)
    assert Booking.objects.get(pk=held.pk).exclusive and Booking.objects.get(pk=paid.pk).exclusive
    assert invariants.exclusive_follows_capacity(None) == []


def test_a_late_payment_takes_exclusive_from_the_capacity_it_is_confirmed_under(tenant):
    """A released hold keeps the flag of its time; paid late under another capacity, it must follow that one."""
    package = PackageFactory(tenant=tenant, daily_capacity=1)
    day = future()
    released = book(package, day)
    Booking.objects.release(released.pk)
    Package.objects.edit_package(package.pk, tenant=tenant, daily_capacity=2)
    other = book(package, day)
    with transaction.atomic():
        assert Booking.objects.confirm_payment(other.pk)[1] == "confirmed"
        assert Booking.objects.confirm_payment(released.pk)[1] == "confirmed"
    assert Booking.objects.get(pk=released.pk).exclusive is False
    assert invariants.exclusive_follows_capacity(None) == []


def test_delete_refuses_a_package_in_use_and_deletes_an_unused_one(tenant, other_tenant):
    used, unused = PackageFactory(tenant=tenant), PackageFactory(tenant=tenant)
    book(used, future())
    with pytest.raises(PackageInUse):
        Package.objects.delete_package(used.pk, tenant=tenant)
    with pytest.raises(PackageNotFound):
        Package.objects.delete_package(unused.pk, tenant=other_tenant)
    with pytest.raises(VersionConflict):
        Package.objects.delete_package(unused.pk, tenant=tenant, version=9)
    Package.objects.delete_package(unused.pk, tenant=tenant, version=1)
    assert list(Package.objects.values_list("pk", flat=True)) == [used.pk]


def test_delete_refuses_a_package_a_proposal_refers_to(tenant):
    from tests.proposals.factories import make_proposal

    package = PackageFactory(tenant=tenant)
    make_proposal(tenant, package=package)
    with pytest.raises(PackageInUse):
        Package.objects.delete_package(package.pk, tenant=tenant)


def test_a_hold_reads_the_capacity_active_and_price_the_package_has_now(tenant):
    package = PackageFactory(tenant=tenant, daily_capacity=1, price=Decimal("10.00"))
    Package.objects.edit_package(package.pk, tenant=tenant, daily_capacity=2, price=Decimal("12.50"), currency="EUR")
    with transaction.atomic():  # the stale instance in hand says capacity 1 and 10.00 USD
        booking = Booking.objects.hold(package, future(), customer_name="A", customer_email="a@example.com")
    assert (booking.amount, booking.currency, booking.exclusive) == (Decimal("12.50"), "EUR", False)
    Package.objects.edit_package(package.pk, tenant=tenant, is_active=False)
    with pytest.raises(PackageNotFound), transaction.atomic():
        Booking.objects.hold(package, future(), customer_name="B", customer_email="b@example.com")


# --- the API -----------------------------------------------------------------------


def url(package):
    return f"/api/t/acme/packages/{package.pk}"


def test_put_never_resets_an_omitted_field(api_client, tenant):
    package = PackageFactory(tenant=tenant, currency="EUR", daily_capacity=4, is_active=False)
    response = api_client.put(url(package), {"name": "Boat", "price": "99.00", "version": 1}, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["currency"], body["daily_capacity"], body["active"], body["version"]) == ("EUR", 4, False, 2)
    package = fresh(package)
    assert (package.name, package.price, package.currency, package.daily_capacity, package.is_active) == (
        "Boat",
        Decimal("99.00"),
        "EUR",
        4,
        False,
    )
    assert_error(api_client.put(url(package), {"name": "Boat", "version": 2}, format="json"), 400, "invalid_input")


def test_patch_with_a_stale_version_is_409_and_writes_nothing(api_client, tenant):
    package = PackageFactory(tenant=tenant)
    assert api_client.get(url(package)).json()["version"] == 1
    assert api_client.patch(url(package), {"active": False, "version": 1}, format="json").json()["version"] == 2
    error = assert_error(
        api_client.patch(url(package), {"active": True, "version": 1}, format="json"), 409, "version_conflict"
    )
    assert error["details"] == {"current": 2}
    assert fresh(package).is_active is False
    assert_error(api_client.delete(url(package) + "?version=1"), 409, "version_conflict")
    assert api_client.delete(url(package) + "?version=2").status_code == 204


@pytest.mark.parametrize("method", ["put", "patch"])
def test_an_edit_without_the_version_it_read_is_refused_and_writes_nothing(api_client, tenant, method):
    """Regression: ``version`` was optional on PUT and PATCH: a storefront's edit from a copy read before a
    colleague paused the package wrote back what it read, ``active`` and the old price with it, over the pause.
    An edit must say which version it read, as a promo code's does."""
    package = PackageFactory(tenant=tenant, name="Tour", price="450.00")
    Package.objects.edit_package(package.pk, tenant=tenant, version=1, is_active=False)  # a colleague pauses it
    body = {"name": "Tour", "price": "400.00", "active": True}
    error = assert_error(getattr(api_client, method)(url(package), body, format="json"), 400, "invalid_input")
    assert "version" in error["fields"]
    stored = fresh(package)
    assert (stored.is_active, stored.price, stored.version) == (False, Decimal("450.00"), 2)


def test_api_capacity_below_occupancy_is_409_naming_the_dates(api_client, tenant):
    package = PackageFactory(tenant=tenant, daily_capacity=2)
    day = future()
    book(package, day), book(package, day)
    error = assert_error(
        api_client.patch(url(package), {"daily_capacity": 1, "version": 1}, format="json"),
        409,
        "capacity_below_occupancy",
    )
    assert day.isoformat() in error["message"] and error["details"]["count"] == 1
    assert fresh(package).daily_capacity == 2


def test_api_create_keeps_its_defaults_and_reports_the_version(api_client, tenant):
    created = api_client.post("/api/t/acme/packages", {"name": "Boat", "price": "5"}, format="json")
    assert created.status_code == 201, created.content
    assert {k: created.json()[k] for k in ("currency", "daily_capacity", "active", "version")} == {
        "currency": "USD",
        "daily_capacity": 1,
        "active": True,
        "version": 1,
    }
    edit = {"version": 1}
    assert_error(
        api_client.patch("/api/t/acme/packages/99999999999999999999", edit, format="json"), 404, "package_not_found"
    )
    assert_error(api_client.patch("/api/t/acme/packages/999999", edit, format="json"), 404, "package_not_found")


# --- the admin form ----------------------------------------------------------------


def admin_data(package, **changes):
    data = {
        "name": package.name,
        "price": str(package.price),
        "currency": package.currency,
        "daily_capacity": package.daily_capacity,
        "expected_version": package.version,
    }
    if package.is_active:
        data["is_active"] = "on"
    data.update(changes)
    return {key: value for key, value in data.items() if value is not None}


def test_admin_form_writes_only_the_changed_field_through_the_manager(admin_client, tenant):
    package = PackageFactory(tenant=tenant, daily_capacity=3)
    page = admin_client.get(reverse("admin:bookings_package_change", args=[package.pk]))
    assert b'name="expected_version"' in page.content
    form = admin_data(package, name="Renamed")  # read at version 1
    Package.objects.filter(pk=package.pk).update(is_active=False)  # the API deactivated it (version 2)
    response = admin_client.post(reverse("admin:bookings_package_change", args=[package.pk]), form)
    assert response.status_code == 200  # refused: the form comes back with the operator's input
    assert response.context["adminform"].form["name"].value() == "Renamed"
    assert "now version 2" in str(response.context["adminform"].form.non_field_errors())
    assert fresh(package).is_active is False and fresh(package).name == package.name
    response = admin_client.post(
        reverse("admin:bookings_package_change", args=[package.pk]), admin_data(fresh(package), name="Renamed")
    )
    assert response.status_code == 302
    assert (fresh(package).name, fresh(package).is_active, fresh(package).version) == ("Renamed", False, 3)


def test_admin_form_capacity_below_occupancy_comes_back_on_the_field(admin_client, tenant):
    package = PackageFactory(tenant=tenant, daily_capacity=2)
    day = future()
    book(package, day), book(package, day)
    response = admin_client.post(
        reverse("admin:bookings_package_change", args=[package.pk]), admin_data(package, daily_capacity=1)
    )
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors["daily_capacity"]
    assert day.isoformat() in errors[0]
    assert fresh(package).daily_capacity == 2


def test_admin_add_and_delete_go_through_the_manager(admin_client, tenant):
    response = admin_client.post(
        reverse("admin:bookings_package_add"),
        {
            "tenant": tenant.pk,
            "name": "New",
            "price": "3.00",
            "currency": "USD",
            "daily_capacity": 2,
            "is_active": "on",
        },
    )
    assert response.status_code == 302, response.content
    new = Package.objects.get(name="New")
    used = PackageFactory(tenant=tenant)
    book(used, future())
    choices = (
        admin_client.get(reverse("admin:bookings_package_changelist")).context["action_form"].fields["action"].choices
    )
    assert [name for name, _label in choices if name] == ["delete_selected_packages"]  # no bulk delete
    response = admin_client.post(
        reverse("admin:bookings_package_changelist"),
        {
            "action": "delete_selected_packages",
            "apply": "1",
            "_selected_action": [new.pk, used.pk],
            **{f"seen_{p.pk}": p.version for p in (new, used)},  # as the page showed them
        },
        follow=True,
    )
    msgs = [str(m) for m in response.context["messages"]]
    assert any("1 package deleted" in m for m in msgs) and any("package_in_use" in m for m in msgs), msgs
    assert list(Package.objects.values_list("pk", flat=True)) == [used.pk]
    page, _response = confirm_delete(admin_client, Package, used.pk)
    assert "Cannot delete" in page.content.decode()  # Django lists the bookings that keep it
    assert Package.objects.filter(pk=used.pk).exists()


def test_the_delete_page_deletes_the_package_at_the_version_it_showed(admin_client, tenant):
    """Django's delete page carries the version it shows, as the bulk delete's page does: a package changed
    after the operator opened it is refused ``version_conflict``, not deleted as it now stands."""
    package = PackageFactory(tenant=tenant, name="Sunset")

    def renamed_meanwhile():
        Package.objects.edit_package(package.pk, tenant=tenant, version=1, name="Sunrise")

    page, refused = confirm_delete(admin_client, Package, package.pk, meanwhile=renamed_meanwhile)
    assert page.context["seen_version"] == 1 and 'name="seen_version" value="1"' in page.content.decode()
    assert any("version_conflict" in str(m) for m in refused.context["messages"])
    assert Package.objects.get(pk=package.pk).name == "Sunrise"
    assert not LogEntry.objects.filter(action_flag=DELETION).exists()  # logged in the transaction it rolled back
    without = admin_client.post(reverse("admin:bookings_package_delete", args=[package.pk]), {"post": "yes"})
    assert without.status_code == 302 and Package.objects.filter(pk=package.pk).exists()  # a POST that saw nothing
    _page, deleted = confirm_delete(admin_client, Package, package.pk)
    assert any("deleted successfully" in str(m) for m in deleted.context["messages"])
    assert not Package.objects.filter(pk=package.pk).exists()


def test_a_price_the_currency_cannot_charge_refuses_the_hold_and_leaves_nothing(tenant):
    """Review regression: a package stored before the currency rules (1500.50 JPY) failed at the provider
    after the hold had committed: the date stayed blocked and the checkout stuck in ``creating``."""
    from core.money import TooManyDecimals

    package = PackageFactory(tenant=tenant, price=Decimal("1500.50"), currency="JPY")
    with pytest.raises(TooManyDecimals):
        book(package, future(12))
    assert not Booking.objects.filter(package=package).exists()


BOOKING_TERMS = "bookings.Booking:booking_terms_transition"


def test_a_capacity_cut_judged_on_dates_to_come_keeps_the_invariant_true(tenant):
    """Review regression: past dates hold what their day's capacity allowed; the edit and the invariant
    agree on judging only the dates from today on."""
    from tests.bookings.test_cross_paths import pay

    package = PackageFactory(tenant=tenant, daily_capacity=2)
    for _ in range(2):
        assert pay(book(package, future(3)).checkout).json()["result"] == "confirmed"
    with pgtrigger.ignore(BOOKING_TERMS):  # bookings are never moved: planted to judge the judges
        Booking.objects.filter(package=package).update(date=future(0) - timedelta(days=5))
    Package.objects.edit_package(package.pk, tenant=tenant, daily_capacity=1)
    assert invariants.capacity_respected(tenant) == []
    with pgtrigger.ignore(BOOKING_TERMS):
        Booking.objects.filter(package=package).update(date=future(4))  # the same rows on a date to come
    assert invariants.capacity_respected(tenant) == [f"package {package.pk} on {future(4)}: 2 active > capacity 1"]


def test_a_plain_save_naming_a_foreign_key_by_its_column_is_still_refused(tenant):
    from core.exceptions import GuardedWriteError

    booking = book(PackageFactory(tenant=tenant), future(13))
    booking = Booking.objects.get(pk=booking.pk)
    booking.package_id = PackageFactory(tenant=tenant).pk
    with pytest.raises(GuardedWriteError):
        booking.save(update_fields=["package_id"])
    booking.customer_name = "Fixed"
    booking.save(update_fields=["customer_name"])  # an unguarded column still saves


def _delete_page(admin_client, *packages):
    return admin_client.post(
        reverse("admin:bookings_package_changelist"),
        {"action": "delete_selected_packages", "_selected_action": [p.pk for p in packages]},
    )


def test_the_delete_page_tells_a_package_a_proposal_refers_to_is_not_deleted(admin_client, tenant):
    """Review regression: the page judged by bookings alone and promised "deleted" to a package that only a
    proposal refers to; confirming it was refused package_in_use."""
    from tests.proposals.factories import make_proposal

    proposed = PackageFactory(tenant=tenant)
    make_proposal(tenant, package=proposed)
    ((_cells, effect),) = _delete_page(admin_client, proposed).context["rows"]
    assert str(effect) != "deleted", effect
    assert "nothing" in str(effect), effect


def test_a_package_changed_after_the_delete_page_is_not_deleted(admin_client, tenant):
    """Review regression: the confirming POST deleted the package as it stood then, not as the page showed it
    (renamed, repriced or reactivated meanwhile); at the version shown it is refused version_conflict."""
    package = PackageFactory(tenant=tenant, name="Old")
    _delete_page(admin_client, package)
    seen = package.version  # what the page showed
    Package.objects.edit_package(package.pk, tenant=None, version=package.version, name="Now in use elsewhere")
    response = admin_client.post(
        reverse("admin:bookings_package_changelist"),
        {
            "action": "delete_selected_packages",
            "apply": "1",
            "_selected_action": [package.pk],
            f"seen_{package.pk}": seen,
        },
        follow=True,
    )
    msgs = [str(m) for m in response.context["messages"]]
    assert Package.objects.filter(pk=package.pk).exists(), msgs
    assert any("version_conflict" in m for m in msgs), msgs


def test_a_package_in_a_currency_since_withdrawn_is_edited_and_taken_off_sale_but_never_sold(tenant):
    """A package stored in lev before Bulgaria's euro: its page still saves (its currency kept, known), nothing
    new may name the lev, and a checkout of it is refused before any hold (no provider charges in it)."""
    from core.money import UnknownCurrency

    package = PackageFactory(tenant=tenant)
    Package.objects.filter(pk=package.pk).update(currency="BGN")  # stored while the lev was payable
    assert Package.objects.edit_package(package.pk, tenant=tenant, name="Old tour").currency == "BGN"
    with pytest.raises(UnknownCurrency):
        Package.objects.edit_package(package.pk, tenant=tenant, currency="DEM")
    with pytest.raises(UnknownCurrency):
        book(Package.objects.get(pk=package.pk))
    assert not Booking.objects.exists()
    assert Package.objects.edit_package(package.pk, tenant=tenant, is_active=False).is_active is False
