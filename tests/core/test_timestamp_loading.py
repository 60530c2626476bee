"""Timestamps come back through psycopg's own loader, as Django would return them (core/db_backend).

Django's own loader stamps its time zone on each value in Python (about 4 µs each, a dozen
per guarded request); psycopg's C loader returns the same datetime, in the session's time zone.
"""

import datetime

import psycopg
import pytest
from django.db import connection
from django.test import override_settings
from psycopg.pq import Format

from bookings.models import Package
from tests.bookings.factories import PackageFactory

pytestmark = pytest.mark.django_db(transaction=True)

NEW_YEAR = "2026-01-01 00:00:00+00"


def loaded(sql):
    """The value ``sql`` selects, and the loader the cursor used for timestamptz."""
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetchone()[0], type(cursor.cursor._tx.get_loader(base_oid(), Format.TEXT))


def base_oid():
    return psycopg.adapters.types["timestamptz"].oid


def test_a_timestamp_is_aware_in_utc_as_django_returns_it(tenant):
    value, loader = loaded(f"SELECT '{NEW_YEAR}'::timestamptz")
    assert value == datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    assert value.tzinfo is datetime.UTC  # Django's own time zone object, not an equal one
    assert loader.__module__ == "psycopg_binary._psycopg"  # psycopg's C loader (requirements.txt: psycopg[binary])
    package = PackageFactory(tenant=tenant)
    assert Package.objects.get(pk=package.pk).created_at.tzinfo is datetime.UTC


def test_a_session_in_another_time_zone_still_reads_the_same_instant():
    """Django's loader replaces the time zone (the session must be in Django's); psycopg's converts."""
    with connection.cursor() as cursor:
        cursor.execute("SET TIME ZONE 'Asia/Tokyo'")
    try:
        value, _loader = loaded(f"SELECT '{NEW_YEAR}'::timestamptz")
        assert value == datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
        assert value.utcoffset() == datetime.timedelta(hours=9)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SET TIME ZONE 'UTC'")


def test_without_use_tz_timestamps_are_naive_as_django_returns_them():
    with override_settings(USE_TZ=False):  # Django's check sees the difference and loads its way
        value, loader = loaded(f"SELECT '{NEW_YEAR}'::timestamptz")
        assert value.tzinfo is None
        assert loader.__module__ != "psycopg_binary._psycopg"
    value, _loader = loaded(f"SELECT '{NEW_YEAR}'::timestamptz")
    assert value.tzinfo is datetime.UTC
