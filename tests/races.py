"""Race helpers for tests: see core/storm.py (shared with race_demo and the benchmarks)."""

import threading
from contextlib import contextmanager

from django.db import connections, transaction

from core.storm import Outcome, run_concurrently, tally

__all__ = ["Outcome", "row_locked", "run_concurrently", "tally"]


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
