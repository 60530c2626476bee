"""Race helpers for tests: hold a lock from another connection, run a path beside it, see who waits.

Storms of simultaneous attempts: core/storm.py (shared with race_demo and the benchmarks).
"""

import copy
import fcntl
import re
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from django.db import connections, transaction

from core import storm
from core.db import advisory_xact_lock
from core.storm import Outcome, tally

__all__ = [
    "Background",
    "attempted_while_held",
    "OpenTransaction",
    "Outcome",
    "advisory_locked",
    "lock_timeout",
    "lock_waiters",
    "row_locked",
    "run_concurrently",
    "tally",
    "wait_until",
    "wait_until_blocked",
    "wait_until_blocked_or_done",
]


# The suite's xdist workers share one server (max_connections 100): two storms of 50 and 60 threads at once
# passed it, and a refused connection broke a barrier (a failure of the machine, not of a race). Storms larger
# than this take turns across the workers, each holding a lock file while its threads are connected.
LARGE_STORM = 20
_STORM_TURN = Path(tempfile.gettempdir()) / "lockstep-test-storms.lock"


def run_concurrently(attempt, n, **options):
    """core.storm's ``run_concurrently``; a storm of more than LARGE_STORM attempts waits for its turn."""
    if n <= LARGE_STORM:
        return storm.run_concurrently(attempt, n, **options)
    with open(_STORM_TURN, "a") as turn:
        fcntl.flock(turn, fcntl.LOCK_EX)  # let go when the file closes
        return storm.run_concurrently(attempt, n, **options)


class OpenTransaction:
    """Run ``work()`` inside a transaction on another connection and keep it open until ``commit()``.

    Whatever locks ``work`` took (row locks, advisory locks) stay held meanwhile: the
    exact lock another path would wait for. ``result``/``error`` hold its outcome.
    As a context manager: started on entry, committed (errors left to ``error``) on exit.
    """

    def __init__(self, work):
        self.work, self.result, self.error = work, None, None
        self.ready, self.release = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._run)

    def _run(self):
        try:
            with transaction.atomic():
                self.result = self.work()
                self.ready.set()
                self.release.wait(30)
        except BaseException as exc:  # noqa: BLE001 - inspected by the test
            self.error = exc
        finally:
            self.ready.set()
            connections.close_all()

    def start(self):
        self.thread.start()
        assert self.ready.wait(15), "the holding transaction never got its locks"
        if self.error is not None:
            raise self.error
        return self

    def commit(self):
        self.release.set()
        self.thread.join(30)
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error
        return self.result

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.release.set()
        self.thread.join(30)


def attempted_while_held(work, attempt, *, commit_after=0.3):
    """``attempt``'s Outcome (a storm of one) when it meets the locks ``work`` holds in an open
    transaction on another connection, which commits ``commit_after`` seconds later, while
    ``attempt`` waits for it."""
    with OpenTransaction(work) as holder:
        threading.Timer(commit_after, holder.release.set).start()
        outcome = run_concurrently(attempt, 1)[0]
    if holder.error is not None:
        raise holder.error
    return outcome


def row_locked(queryset):
    """Hold ``SELECT … FOR UPDATE`` on the queryset's rows from another connection while the block runs."""
    return OpenTransaction(lambda: list(queryset.select_for_update(of=("self",)).order_by("pk")))


def advisory_locked(namespace, *parts):
    """Hold the advisory lock on (namespace, parts) from another connection while the block runs."""
    return OpenTransaction(lambda: advisory_xact_lock(namespace, *parts))


class Background:
    """Run ``fn()`` on its own connection in a thread; ``done`` is set when it returned or raised."""

    def __init__(self, fn):
        self.fn, self.result, self.error = fn, None, None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self):
        try:
            self.result = self.fn()
        except BaseException as exc:  # noqa: BLE001 - inspected by the test
            self.error = exc
        finally:
            self.done.set()
            connections.close_all()

    @property
    def outcome(self):
        return Outcome(value=self.result, error=self.error)

    def join(self):
        self.thread.join(30)
        assert not self.thread.is_alive(), "the background path hung"
        return self


def lock_waiters(sql_fragment=""):
    """How many other sessions of this database wait for a lock now, in a statement containing ``sql_fragment``."""
    with connections["default"].cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid() AND query LIKE %s",
            ["%" + sql_fragment + "%"],
        )
        return cursor.fetchone()[0]


def wait_until(condition, *, timeout=10.0):
    """Poll ``condition()`` until it returns something true; return that (AssertionError after ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    while not (reached := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout}s: {condition}")
        time.sleep(0.01)
    return reached


def wait_until_blocked(sql_fragment=""):
    """Wait until another session waits for a lock in a statement containing ``sql_fragment``."""
    wait_until(lambda: lock_waiters(sql_fragment))


def wait_until_blocked_or_done(background, timeout=10):
    """Wait until ``background`` waits for a lock (True) or finished without waiting (False)."""
    state = wait_until(
        lambda: "done" if background.done.is_set() else "blocked" if lock_waiters() else None, timeout=timeout
    )
    return state == "blocked"


def lock_timeout(milliseconds):
    """This thread's transactions give up waiting for a lock after ``milliseconds`` (tests that wait on purpose);
    see ``shorter_timeout``."""
    return shorter_timeout("lock_timeout", milliseconds)


def statement_timeout(milliseconds):
    """This thread's statements are cancelled after ``milliseconds`` (57014); see ``shorter_timeout``."""
    return shorter_timeout("statement_timeout", milliseconds)


@contextmanager
def shorter_timeout(name, milliseconds):
    """This thread's ``name`` (lock_timeout, statement_timeout) is ``milliseconds``.

    No session ``SET`` (behind a pooler it would stay on a server connection another client gets
    next). Inside a transaction: ``SET LOCAL``. Outside: this thread reconnects with the shorter
    timeout among its startup options, or, behind the pooler, each of its transactions sets it
    (core/db_backend reads the connection's own ``LOCK_TIMEOUT_MS``, ``STATEMENT_TIMEOUT_MS``).
    """
    connection = connections["default"]
    if connection.in_atomic_block:  # inside a transaction (the test's own): SET LOCAL, gone at its end
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT current_setting(%s), set_config(%s, %s, true)",
                [name, name, f"{int(milliseconds)}ms"],
            )
            (previous, _) = cursor.fetchone()
        try:
            yield
        finally:
            with connection.cursor() as cursor:
                cursor.execute("SELECT set_config(%s, %s, true)", [name, previous])
        return
    original = connection.settings_dict
    shorter = copy.deepcopy(original)  # this thread's connection only: other threads keep theirs
    shorter[f"{name.upper()}_MS"] = int(milliseconds)  # read by core/db_backend behind the pooler
    options = shorter["OPTIONS"].get("options")
    if options:
        shorter["OPTIONS"]["options"] = re.sub(rf"{name}=\d+", f"{name}={int(milliseconds)}", options)
    connection.close()
    connection.settings_dict = shorter
    try:
        yield
    finally:
        connection.close()
        connection.settings_dict = original
