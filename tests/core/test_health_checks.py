"""The health check before a request reuses its connection: a round trip only when the server spoke.

Each request begins with ``close_old_connections`` (Django's ``request_started`` handler), and its
first statement with the check of CONN_HEALTH_CHECKS (core/db_backend). What reaches the server is
read off the wire, from libpq's own trace of the connection.
"""

import time

import psycopg
import pytest
from django.db import close_old_connections, connection

from core.db_backend.base import heard_from_server
from tests.wire import wire

pytestmark = pytest.mark.django_db(transaction=True)


def a_request_reads(sql):
    """What a request does with the connection: the request's housekeeping, then its first statement."""
    close_old_connections()
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetchone()[0]


def test_a_request_on_a_quiet_kept_connection_sends_only_its_own_statements():
    assert connection.settings_dict["CONN_HEALTH_CHECKS"] and connection.settings_dict["CONN_MAX_AGE"]
    a_request_reads("SELECT 1")  # the connection is open and kept
    with wire(connection) as sent:
        assert a_request_reads("SELECT 42") == 42
        assert a_request_reads("SELECT 43") == 43
    assert sent == ['"SELECT 42"', '"SELECT 43"']  # no "SELECT 1" before either


def test_a_connection_the_server_ended_is_replaced_before_the_request_needs_it():
    ended = a_request_reads("SELECT pg_backend_pid()")
    with psycopg.connect(**connection.get_connection_params()) as other:
        other.execute("SELECT pg_terminate_backend(%s)", [ended])
    deadline = time.monotonic() + 10
    while not heard_from_server(connection.connection):  # the server's FATAL message is on its way
        assert time.monotonic() < deadline, "the ended session never reached the client"
        time.sleep(0.01)
    assert a_request_reads("SELECT pg_backend_pid()") != ended  # answered, on a new connection


def test_a_kept_connection_that_heard_something_gets_the_real_check():
    a_request_reads("SELECT 1")
    with psycopg.connect(**connection.get_connection_params(), autocommit=True) as other:
        listener = a_request_reads("SELECT pg_backend_pid()")
        with connection.cursor() as cursor:
            cursor.execute("LISTEN lockstep_health_check_test")
        other.execute("NOTIFY lockstep_health_check_test")
        deadline = time.monotonic() + 10
        while not heard_from_server(connection.connection):
            assert time.monotonic() < deadline, "the notification never reached the client"
            time.sleep(0.01)
        with wire(connection) as sent:
            assert a_request_reads("SELECT pg_backend_pid()") == listener  # still usable: kept
        with connection.cursor() as cursor:
            cursor.execute("UNLISTEN *")
    assert sent == ['"SELECT 1"', '"SELECT pg_backend_pid()"']


def test_a_kept_connection_idle_for_a_while_gets_the_real_check_even_when_quiet():
    """A peer gone without a word (a dropped NAT entry, a failover without FIN) leaves nothing to read."""
    a_request_reads("SELECT 1")
    a_request_reads("SELECT 1")  # checked within the window: the next one would skip the round trip
    connection.health_checked_at -= connection.HEALTH_CHECK_QUIET_SECONDS + 1  # as if idle since
    with wire(connection) as sent:
        assert a_request_reads("SELECT 42") == 42
        assert a_request_reads("SELECT 43") == 43
    assert sent == ['"SELECT 1"', '"SELECT 42"', '"SELECT 43"']  # the real check once, then quiet again
