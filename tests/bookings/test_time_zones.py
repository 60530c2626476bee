"""A shop's "today" is its own: the database clock read on the calendar of the tenant's time zone.

Regression: every guard read ``current_date``, the UTC date whatever the shop. A Tokyo shop sold
yesterday's date for nine hours a day (paid, then confirmed for a day gone by); a Los Angeles shop
refused today's, and showed it full, for the last hours of its afternoon. The zones below sit at the
edges of the world's offsets (UTC+14, UTC-12): at any moment at least one of them is on another date
than UTC, so each test bites whatever the hour it runs.
"""

from datetime import timedelta

import pytest
from django.db import connection, transaction

from bookings.exceptions import CapacityBelowOccupancy, DateInPast
from bookings.models import Booking, Package
from bookings.selectors import places_left
from core.exceptions import UnknownTimeZone
from core.guards import database_refusals, tenant_today
from core.models import Tenant
from proposals.models import Proposal
from tests.bookings.factories import PackageFactory
from tests.proposals.factories import make_proposal
from tests.refusals import refused_by

pytestmark = pytest.mark.django_db

EDGES = ["Etc/GMT-14", "Etc/GMT+12"]  # POSIX signs: UTC+14 and UTC-12


def utc_today():
    with connection.cursor() as cursor:
        cursor.execute("SELECT (clock_timestamp() AT TIME ZONE 'UTC')::date")
        return cursor.fetchone()[0]


def in_zone(tenant, zone):
    Tenant.objects.filter(pk=tenant.pk).update(time_zone=zone)
    tenant.refresh_from_db()
    return tenant_today(tenant)


def hold(package, day):
    with transaction.atomic():
        return Booking.objects.hold(
            package, day, customer_name="Ann", customer_email="ann@example.com", tenant=package.tenant
        )


def test_the_edge_zones_are_on_another_date_than_utc_now(tenant):
    """What makes the tests below bite: one of the two zones is not on UTC's date."""
    assert {in_zone(tenant, zone) for zone in EDGES} != {utc_today()}


@pytest.mark.parametrize("zone", EDGES)
def test_a_hold_is_judged_by_the_shops_own_today(tenant, zone):
    today = in_zone(tenant, zone)
    package = PackageFactory(tenant=tenant, daily_capacity=5)
    assert hold(package, today).date == today  # the shop's today: bookable, whatever UTC's date
    with pytest.raises(DateInPast):
        hold(package, today - timedelta(days=1))  # the shop's yesterday: gone, whatever UTC's date


@pytest.mark.parametrize("zone", EDGES)
def test_a_proposal_and_the_availability_follow_the_shops_today(tenant, zone):
    today = in_zone(tenant, zone)
    package = PackageFactory(tenant=tenant, daily_capacity=2)
    assert make_proposal(tenant, package=package, day=today).date == today
    with pytest.raises(DateInPast):
        make_proposal(tenant, package=package, day=today - timedelta(days=1), session_id="chat-2")
    assert Proposal.objects.count() == 1
    left = places_left(tenant, today - timedelta(days=1), today, package_id=package.pk)
    assert left == [{"date": today - timedelta(days=1), "remaining": 0}, {"date": today, "remaining": 2}]


@pytest.mark.parametrize("zone", EDGES)
def test_a_capacity_cut_counts_the_shops_today_and_after(tenant, zone):
    """The cut is judged against the dates still to come in the shop: its today's bookings count."""
    today = in_zone(tenant, zone)
    package = PackageFactory(tenant=tenant, daily_capacity=2)
    hold(package, today), hold(package, today)
    with pytest.raises(CapacityBelowOccupancy):
        Package.objects.edit_package(package.pk, tenant=tenant, daily_capacity=1)
    assert Package.objects.get(pk=package.pk).daily_capacity == 2


def test_a_time_zone_the_database_does_not_know_is_refused_whoever_writes(tenant):
    """tenant_time_zone_known: every booking of the shop reads its day in that zone, so an unknown one would
    fail each of them; the edit that stores it is refused instead (400 unknown_time_zone)."""
    rows = Tenant.objects.filter(pk=tenant.pk)
    assert refused_by(lambda: rows.update(time_zone="Mars/Olympus_Mons")) == "tenant_time_zone_known"
    with pytest.raises(UnknownTimeZone), database_refusals(), transaction.atomic():
        rows.update(time_zone="Europe/Nowhere")
    assert refused_by(lambda: Tenant.objects.create(name="B", slug="b", time_zone="")) == "tenant_time_zone_known"
    assert rows.get().time_zone == "UTC"
    rows.update(time_zone="America/Los_Angeles")  # a known one is taken


@pytest.fixture
def two_shops(tenant, other_tenant):
    """A shop at UTC-12 with a booking on its today; a shop now at UTC+14 with one on its today and one on a
    day it has left behind (held while it was at UTC-12, UTC+14 being one or two days ahead of UTC-12)."""
    west, east = PackageFactory(tenant=tenant, daily_capacity=5), PackageFactory(tenant=other_tenant, daily_capacity=5)
    west_today = in_zone(tenant, "Etc/GMT+12")
    in_zone(other_tenant, "Etc/GMT+12")
    east_gone = hold(east, west_today)
    east_today = in_zone(other_tenant, "Etc/GMT-14")
    assert east_today > east_gone.date
    return {"west": hold(west, west_today), "east": hold(east, east_today), "east_gone": east_gone}


def listed(admin_client, query):
    return {b.pk for b in admin_client.get(f"/admin/bookings/booking/?{query}").context["cl"].result_list}


def test_the_admins_when_filter_reads_each_booking_in_its_own_shops_today(admin_client, two_shops):
    """One page, two shops a day or two apart: today is each one's own (a single zone for both, UTC's or
    either shop's, lists the wrong bookings whatever the hour)."""
    ids = {name: booking.pk for name, booking in two_shops.items()}
    assert listed(admin_client, "when=today") == {ids["west"], ids["east"]}
    assert listed(admin_client, "when=upcoming") == {ids["west"], ids["east"]}
    assert listed(admin_client, "when=next7") == {ids["west"], ids["east"]}
    assert listed(admin_client, "when=past") == {ids["east_gone"]}


def test_the_package_lists_upcoming_count_starts_at_its_shops_today(admin_client, two_shops):
    page = admin_client.get("/admin/bookings/package/").context["cl"].result_list
    upcoming = {package.tenant.time_zone: package.upcoming for package in page}
    assert upcoming == {"Etc/GMT+12": 1, "Etc/GMT-14": 1}  # the east shop's day left behind is not upcoming


def test_the_capacity_invariant_judges_from_the_shops_today(tenant):
    """Two bookings on one date of a package cut to 1 place behind the guard's back: a breach while that date
    is the shop's today, history once the shop's today is past it."""
    from bookings.invariants import capacity_respected

    package = PackageFactory(tenant=tenant, daily_capacity=2)
    day = in_zone(tenant, "Etc/GMT+12")
    hold(package, day), hold(package, day)
    Package.objects.filter(pk=package.pk).update(daily_capacity=1)
    assert capacity_respected(tenant) == [f"package {package.pk} on {day}: 2 active > capacity 1"]
    assert in_zone(tenant, "Etc/GMT-14") > day
    assert capacity_respected(tenant) == []
