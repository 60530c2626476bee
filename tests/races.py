"""Race helpers for tests: see core/storm.py (shared with race_demo and the benchmarks)."""

import copy
import re
import threading
from contextlib import contextmanager

from django.db import connections, transaction
from django.test import override_settings

from core.storm import Outcome, run_concurrently, tally

__all__ = ["Outcome", "lock_timeout", "row_locked", "run_concurrently", "tally"]


@contextmanager
def row_locked(queryset, *, timeout=10):
    """Hold ``SELECT … FOR UPDATE`` on the queryset's rows from another connection while the block runs."""
    locked, release, failure = threading.Event(), threading.Event(), []

    def hold():
        try:
            with transaction.atomic():
                list(queryset.select_for_update())
                locked.set()
                release.wait(timeout)
        except Exception as error:  # reported to the test below, not lost in the thread
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
    next): this thread reconnects with the shorter timeout among its startup options, or, behind the
    pooler, each transaction sets it from the overridden setting (core/db_backend).
    """
    connection = connections["default"]
    original = connection.settings_dict
    shorter = copy.deepcopy(original)
    options = shorter["OPTIONS"].get("options")
    if options:
        shorter["OPTIONS"]["options"] = re.sub(r"lock_timeout=\d+", f"lock_timeout={int(milliseconds)}", options)
    with override_settings(LOCK_TIMEOUT_MS=int(milliseconds)):
        connection.close()
        connection.settings_dict = shorter
        try:
            yield
        finally:
            connection.close()
            connection.settings_dict = original
