"""A transaction's BEGIN goes to the server with its first statement: one round trip, not two.

psycopg stays in autocommit and ``atomic()`` only notes the transaction is owed
(core/db_backend); the cursor sends the opening in the same query as the first statement and
moves past its results. What reaches the server is read off the wire (libpq's trace).
"""

import copy

import pytest
from django.db import IntegrityError, ProgrammingError, connection, transaction
from psycopg import IsolationLevel
from psycopg.pq import TransactionStatus

from bookings.models import Package
from core.db_backend.base import DatabaseWrapper, set_timeouts_sql
from tests.bookings.factories import PackageFactory
from tests.wire import wire

pytestmark = pytest.mark.django_db(transaction=True)


def opening(first):
    """The query that opens a transaction with ``first``: BEGIN and, behind a pooler, the timeouts (core/db_backend)."""
    pooled = connection.settings_dict["TIMEOUTS_PER_TRANSACTION"]
    timeouts = [set_timeouts_sql(connection.settings_dict)] if pooled else []
    return '"' + "; ".join(["BEGIN", *timeouts, first]) + '"'


def server_status():
    return connection.connection.pgconn.transaction_status


def one(sql, params=None):
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()


def test_a_transaction_is_its_statements_and_commit_on_the_wire():
    one("SELECT 1")  # connected
    with wire(connection) as sent, transaction.atomic():
        assert one("SELECT %s::int", [41]) == (41,)  # the caller reads its own statement's row
        assert server_status() == TransactionStatus.INTRANS
        assert one("SELECT txid_current_if_assigned() IS NULL") == (True,)
    assert sent == [opening("SELECT 41::int"), '"SELECT txid_current_if_assigned() IS NULL"', '"COMMIT"']
    assert server_status() == TransactionStatus.IDLE


def test_an_empty_transaction_sends_nothing_and_autocommit_statements_no_begin():
    one("SELECT 1")
    with wire(connection) as sent:
        with transaction.atomic():
            pass
        one("SELECT 2")
    assert sent == ['"SELECT 2"']


def test_row_counts_and_rows_are_the_statements_own(tenant):
    PackageFactory.create_batch(3, tenant=tenant)
    with transaction.atomic():
        assert Package.objects.filter(tenant=tenant).update(name="Renamed") == 3
    with transaction.atomic():
        assert sorted(Package.objects.filter(tenant=tenant).values_list("name", flat=True)) == ["Renamed"] * 3


def test_a_failing_first_statement_rolls_the_transaction_back_and_the_connection_goes_on(tenant):
    package = PackageFactory(tenant=tenant)
    with pytest.raises(IntegrityError), transaction.atomic():
        Package.objects.create(pk=package.pk, tenant=tenant, name="Duplicate", price="1.00", currency="USD")
    assert server_status() == TransactionStatus.IDLE
    with transaction.atomic():
        Package.objects.filter(pk=package.pk).update(name="After")
        with pytest.raises(IntegrityError), transaction.atomic():  # a savepoint, rolled back alone
            Package.objects.create(pk=package.pk, tenant=tenant, name="Again", price="1.00", currency="USD")
    assert Package.objects.get(pk=package.pk).name == "After"


def test_a_rolled_back_transaction_leaves_nothing(tenant):
    package = PackageFactory(tenant=tenant, name="Before")
    with pytest.raises(RuntimeError), transaction.atomic():
        Package.objects.filter(pk=package.pk).update(name="Lost")
        raise RuntimeError
    assert Package.objects.get(pk=package.pk).name == "Before"


def test_a_named_cursor_and_executemany_open_the_transaction_first(tenant):
    PackageFactory.create_batch(3, tenant=tenant)
    with transaction.atomic():
        names = [package.name for package in Package.objects.filter(tenant=tenant).iterator(chunk_size=2)]
        assert len(names) == 3 and server_status() == TransactionStatus.INTRANS
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("CREATE TEMP TABLE opening_probe (n int) ON COMMIT DROP")
        cursor.executemany("INSERT INTO opening_probe VALUES (%s)", [(1,), (2,)])
        cursor.execute("SELECT count(*) FROM opening_probe")
        assert cursor.fetchone() == (2,)
    with transaction.atomic(), connection.cursor() as cursor:  # executemany first: BEGIN on its own
        cursor.executemany("SELECT %s", [(1,), (2,)])
        assert server_status() == TransactionStatus.INTRANS


@pytest.fixture
def serializable(db):
    settings_dict = copy.deepcopy(connection.settings_dict)
    settings_dict["OPTIONS"]["isolation_level"] = IsolationLevel.SERIALIZABLE
    wrapper = DatabaseWrapper(settings_dict, alias="serializable-probe")
    yield wrapper
    wrapper.close()


def test_the_connections_isolation_level_opens_its_transactions(serializable):
    serializable.set_autocommit(False)  # as atomic() does
    try:
        with serializable.cursor() as cursor:
            cursor.execute("SHOW transaction_isolation")
            assert cursor.fetchone() == ("serializable",)
            cursor.execute("SELECT 1")  # no second BEGIN inside the transaction
            assert cursor.fetchone() == (1,)
    finally:
        serializable.rollback()
        serializable.set_autocommit(True)
    with serializable.cursor() as cursor:  # autocommit: the server's default, no transaction of ours
        cursor.execute("SHOW transaction_isolation")
        assert cursor.fetchone() == ("read committed",)


def test_a_transaction_opened_by_hand_opens_the_same_way():
    one("SELECT 1")
    with wire(connection) as sent:
        transaction.set_autocommit(False)
        try:
            assert one("SELECT 7") == (7,)
        finally:
            transaction.rollback()
            transaction.set_autocommit(True)
    assert sent == [opening("SELECT 7"), '"ROLLBACK"']


def test_a_named_cursor_is_held_past_commit_only_outside_a_transaction(tenant):
    """Behind the pooler there are no named cursors at all (DISABLE_SERVER_SIDE_CURSORS): none is held."""
    named = not connection.settings_dict["DISABLE_SERVER_SIDE_CURSORS"]
    PackageFactory.create_batch(3, tenant=tenant)
    with transaction.atomic():  # WITH HOLD ... FOR UPDATE would be refused
        locked = Package.objects.select_for_update().filter(tenant=tenant).iterator(chunk_size=2)
        assert len(list(locked)) == 3
        rows = Package.objects.filter(tenant=tenant).iterator(chunk_size=1)
        next(rows)
        assert one("SELECT bool_or(is_holdable) FROM pg_cursors") == (False if named else None,)
        rows.close()
    rows = Package.objects.filter(tenant=tenant).iterator(chunk_size=1)
    next(rows)
    assert one("SELECT bool_or(is_holdable) FROM pg_cursors") == (True if named else None,)
    rows.close()


def test_back_to_autocommit_with_the_transaction_still_open_is_refused(tenant):
    package = PackageFactory(tenant=tenant, name="Before")
    transaction.set_autocommit(False)
    Package.objects.filter(pk=package.pk).update(name="Left open")
    with pytest.raises(ProgrammingError):  # as psycopg refuses it: the work is neither kept nor lost
        transaction.set_autocommit(True)
    transaction.rollback()
    transaction.set_autocommit(True)
    assert server_status() == TransactionStatus.IDLE
    assert Package.objects.get(pk=package.pk).name == "Before"


def test_copy_first_in_a_transaction_is_rolled_back_with_it():
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE opening_copy_probe (n int)")
    try:
        with pytest.raises(RuntimeError), transaction.atomic(), connection.cursor() as cursor:
            with cursor.copy("COPY opening_copy_probe (n) FROM STDIN") as copy:
                copy.write_row((1,))
            raise RuntimeError
        assert one("SELECT count(*) FROM opening_copy_probe") == (0,)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TABLE opening_copy_probe")
