"""``bench.cpu``: a measurement is charged only the CPU spent while it runs."""

import threading

import psutil
import pytest
from django.db import connection, connections

from bench.cpu import close_connections, postmaster_pid

pytestmark = pytest.mark.django_db(transaction=True)


def in_own_thread(work):
    """Run ``work`` on a thread of its own, which has its own connections; return what it returned."""
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("value", work()))
    thread.start()
    thread.join()
    return result["value"]


def test_closed_connections_backends_are_reaped_before_a_measurement_may_start():
    """Else a backend's whole life (a set-up's cloned rows) is charged to the measurement reaping it."""

    def work():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            backend = cursor.fetchone()[0]
        assert psutil.pid_exists(backend)
        close_connections()
        return backend, connections["default"].connection

    assert postmaster_pid() is not None  # the server runs here, as the meter needs
    backend, left_open = in_own_thread(work)

    assert left_open is None
    assert not psutil.pid_exists(backend)
