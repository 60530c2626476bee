"""Race helpers for tests: see core/storm.py (shared with race_demo and the benchmarks)."""

import copy
import re
import threading
from contextlib import contextmanager

from django.db import connections, transaction

from core.storm import Outcome, run_concurrently, tally

__all__ = ["Outcome", "lock_timeout", "row_locked", "run_concurrently", "tally"]


@contextmanager
def row_locked(queryset, *, timeout=10):
    """Hold ``SELECT … FOR UPDATE`` on the queryset's rows from another connection while the block runs."""
    locked, release, failure = threading.Event(), threading.Event(), []

    def hold():
        try:
            with transaction.atomic():
                list(queryset.select_for_update(of=("self",)).order_by("pk"))
                locked.set()
                release.wait(timeout)
        except Exception as error:  # noqa: BLE001 - reported to the test below, not lost in the thread
            failure.append(error)
            locked.set()
        finally:
            connections.close_all()

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert locked.wait(timeout) and not failure, failure
        yield
    finally:
        release.set()
        thread.join(timeout)


@contextmanager
def lock_timeout(milliseconds):
    """This thread's transactions give up waiting for a lock after ``milliseconds`` (tests that wait on purpose).

    No session ``SET`` (behind a pooler it would stay on a server connection another client gets
    next). Inside a transaction: ``SET LOCAL``. Outside: this thread reconnects with the shorter
    timeout among its startup options, or, behind the pooler, each of its transactions sets it
    (core/db_backend reads the connection's own ``LOCK_TIMEOUT_MS``).
    """
    connection = connections["default"]
    if connection.in_atomic_block:  # inside a transaction (the test's own): SET LOCAL, gone at its end
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT current_setting('lock_timeout'), set_config('lock_timeout', %s, true)",
                [f"{int(milliseconds)}ms"],
            )
            (previous, _) = cursor.fetchone()
        try:
            yield
        finally:
            with connection.cursor() as cursor:
                cursor.execute("SELECT set_config('lock_timeout', %s, true)", [previous])
        return
    original = connection.settings_dict
    shorter = copy.deepcopy(original)  # this thread's connection only: other threads keep theirs
    shorter["LOCK_TIMEOUT_MS"] = int(milliseconds)  # read by core/db_backend behind the pooler
    options = shorter["OPTIONS"].get("options")
    if options:
        shorter["OPTIONS"]["options"] = re.sub(r"lock_timeout=\d+", f"lock_timeout={int(milliseconds)}", options)
    connection.close()
    connection.settings_dict = shorter
    try:
        yield
    finally:
        connection.close()
        connection.settings_dict = original
