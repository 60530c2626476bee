"""Pooler-safe timeouts: in effect inside every transaction, whatever the connection was started with.

`.ci/run` runs this file (and the race tests, and race_demo) a second time through PgBouncer in
transaction mode (DATABASE_POOL_MODE=transaction): there the probe below is the pooler's proof.
"""

import copy
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection
from rest_framework.test import APIClient

from bookings.managers import lock_package_exclusive
from core.db_backend.base import DatabaseWrapper, execute_carrying_timeouts
from tests.bookings.factories import PackageFactory, future
from tests.factories import TenantFactory
from tests.races import OpenTransaction

ROOT = Path(__file__).resolve().parents[2]


TIMEOUTS = (
    "SELECT (SELECT setting::int FROM pg_settings WHERE name = 'lock_timeout'),"
    " (SELECT setting::int FROM pg_settings WHERE name = 'statement_timeout')"
)  # milliseconds


def timeouts(conn):
    with conn.cursor() as cursor:
        cursor.execute(TIMEOUTS)
        return cursor.fetchone()


def timeouts_in_a_transaction(conn):
    conn.set_autocommit(False)  # as transaction.atomic() does: the next statement opens the transaction
    try:
        return timeouts(conn)
    finally:
        conn.rollback()
        conn.set_autocommit(True)


@pytest.fixture
def startup_options_dropped(db):
    """A connection as a transaction-mode pooler leaves it: no startup options, timeouts per transaction."""
    settings_dict = copy.deepcopy(connection.settings_dict)
    settings_dict["OPTIONS"].pop("options", None)
    settings_dict["TIMEOUTS_PER_TRANSACTION"] = True
    pooled = DatabaseWrapper(settings_dict, alias="pooled-probe")
    yield pooled
    pooled.close()


def test_each_transaction_sets_the_timeouts_the_pooler_dropped(startup_options_dropped, settings):
    pooled = startup_options_dropped
    assert timeouts(pooled) == (0, 0)  # outside a transaction: the server's defaults
    settings.LOCK_TIMEOUT_MS, settings.STATEMENT_TIMEOUT_MS = 1500, 9000  # read as each transaction begins
    assert timeouts_in_a_transaction(pooled) == (1500, 9000)
    pooled.settings_dict["LOCK_TIMEOUT_MS"] = 300  # one connection's own (tests.races.lock_timeout)
    assert timeouts_in_a_transaction(pooled) == (300, 9000)
    assert timeouts(pooled) == (0, 0)  # SET LOCAL: nothing left on the connection for the next client


def test_the_configured_timeouts_are_in_effect_in_a_transaction(db):
    """Directly: from the connection's start; behind the pooler (the CI stage): set by the transaction."""
    assert timeouts(connection) == (settings.LOCK_TIMEOUT_MS, settings.STATEMENT_TIMEOUT_MS)


@pytest.mark.django_db(transaction=True)
def test_a_held_lock_answers_409_resource_locked_within_the_lock_timeout():
    """The probe: a checkout waiting on a package lock another transaction holds gives up at lock_timeout."""
    package = PackageFactory(tenant=TenantFactory(slug="probe"))
    with OpenTransaction(lambda: lock_package_exclusive(package.pk, using="default")):  # what a capacity edit holds
        started = time.monotonic()
        response = APIClient().post(
            "/api/public/probe/checkouts",
            {"package": package.pk, "date": future().isoformat(), "customer": {"name": "A", "email": "a@b.co"}},
            format="json",
        )
        waited = time.monotonic() - started
    assert response.status_code == 409 and response.json()["error"]["code"] == "resource_locked", response.content
    assert response["Retry-After"]
    limit = settings.LOCK_TIMEOUT_MS / 1000
    assert limit * 0.9 <= waited < limit + 2, waited  # waited for the lock, then gave up at the timeout


def test_check_deploy_refuses_timeouts_that_are_not_in_effect(db, settings):
    from core.checks import refuse_missing_timeouts

    assert refuse_missing_timeouts(None, databases=["default"]) == []
    assert refuse_missing_timeouts(None) == []  # without --database it does not connect
    settings.LOCK_TIMEOUT_MS += 1  # configured, but not what the connection has
    [error] = refuse_missing_timeouts(None, databases=["default"])
    assert error.id == "lockstep.E010" and "lock_timeout" in error.msg


POOLED_SETTINGS = """
import django
django.setup()
from django.conf import settings
database = settings.DATABASES["default"]
print(
    "options" in database["OPTIONS"],
    database["TIMEOUTS_PER_TRANSACTION"],
    database["DISABLE_SERVER_SIDE_CURSORS"],
    settings.PROCRASTINATE_WORKER_DEFAULTS["listen_notify"],
)
"""


@pytest.mark.parametrize(
    ("mode", "expected"), [("transaction", "False True True False"), ("", "True False False True")]
)
def test_the_pool_mode_decides_where_the_timeouts_go(mode, expected):
    """Pooled: no startup options (PgBouncer refuses them), per-transaction timeouts, no server-side
    cursors (a cursor cannot outlive the transaction the pooler lends a connection for), polling worker."""
    import os
    import subprocess
    import sys

    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DATABASE_URL": "postgres://probe@127.0.0.1:6432/probe",
        "DATABASE_POOL_MODE": mode,
    }
    probe = subprocess.run(
        [sys.executable, "-c", POOLED_SETTINGS], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert probe.stdout.strip() == expected, probe.stderr


def test_a_statement_outside_a_transaction_carries_the_timeouts_the_pooler_dropped(startup_options_dropped):
    """A one-statement guard runs outside any transaction: behind the pooler it carries the timeouts in
    the same query (core.db_backend.execute_carrying_timeouts); a transaction's opening carries them instead."""
    pooled = startup_options_dropped
    configured = (settings.LOCK_TIMEOUT_MS, settings.STATEMENT_TIMEOUT_MS)
    with pooled.cursor() as cursor:
        cursor.execute(TIMEOUTS)
        assert cursor.fetchone() == (0, 0)  # not carried: the server's defaults
        execute_carrying_timeouts(cursor, TIMEOUTS, [])
        assert cursor.fetchone() == configured  # the cursor is on the statement's own result
        cursor.execute(TIMEOUTS)
        assert cursor.fetchone() == (0, 0)  # SET LOCAL: gone with the statement's implicit transaction
    pooled.set_autocommit(False)
    try:
        with pooled.cursor() as cursor:
            execute_carrying_timeouts(cursor, TIMEOUTS, [])  # the opening carries them, once
            assert cursor.fetchone() == configured
    finally:
        pooled.rollback()
        pooled.set_autocommit(True)
