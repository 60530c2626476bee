import threading
import time

import pytest
from django.db import connections, transaction

from core.db import (
    LockNamespace,
    advisory_xact_lock,
    advisory_xact_locks,
    lock_errors_as_conflicts,
    set_local_lock_timeout,
    try_advisory_xact_lock,
)
from core.exceptions import LockContended


@pytest.mark.django_db(transaction=True)
def test_advisory_lock_refuses_outside_atomic():
    with pytest.raises(RuntimeError, match="transaction-scoped"):
        advisory_xact_lock(LockNamespace.TEST, "x")
    with pytest.raises(RuntimeError, match="transaction-scoped"):
        try_advisory_xact_lock(LockNamespace.TEST, "x")


class _Holder(threading.Thread):
    """Holds an advisory lock on its own connection until released."""

    def __init__(self, *key):
        super().__init__(daemon=True)
        self.key = key
        self.held = threading.Event()
        self.release = threading.Event()

    def run(self):
        try:
            with transaction.atomic():
                advisory_xact_lock(*self.key)
                self.held.set()
                self.release.wait(10)
        finally:
            connections.close_all()


@pytest.mark.django_db(transaction=True)
def test_second_connection_waits_for_the_lock_then_gets_it():
    holder = _Holder(LockNamespace.TEST, "date", 1)
    holder.start()
    assert holder.held.wait(5)
    threading.Timer(0.3, holder.release.set).start()
    started = time.monotonic()
    with transaction.atomic():
        advisory_xact_lock(LockNamespace.TEST, "date", 1)
    waited = time.monotonic() - started
    holder.join(5)
    assert 0.2 < waited < 2.0


@pytest.mark.django_db(transaction=True)
def test_try_form_is_refused_at_once_while_held_and_free_after():
    holder = _Holder(LockNamespace.TEST, "date", 2)
    holder.start()
    assert holder.held.wait(5)
    try:
        started = time.monotonic()
        with transaction.atomic():
            assert try_advisory_xact_lock(LockNamespace.TEST, "date", 2) is False
            assert try_advisory_xact_lock(LockNamespace.TEST, "date", 3) is True
        assert time.monotonic() - started < 0.5
    finally:
        holder.release.set()
        holder.join(5)
    with transaction.atomic():
        assert try_advisory_xact_lock(LockNamespace.TEST, "date", 2) is True


@pytest.mark.django_db(transaction=True)
def test_lock_timeout_becomes_lock_contended():
    holder = _Holder(LockNamespace.TEST, "busy")
    holder.start()
    assert holder.held.wait(5)
    try:
        started = time.monotonic()
        with pytest.raises(LockContended) as refused:
            with lock_errors_as_conflicts(), transaction.atomic():
                set_local_lock_timeout(100)
                advisory_xact_lock(LockNamespace.TEST, "busy")
        assert time.monotonic() - started < 1.0
        assert refused.value.code == "resource_locked"
    finally:
        holder.release.set()
        holder.join(5)


@pytest.mark.django_db(transaction=True)
def test_lock_is_released_at_commit_and_set_local_does_not_leak():
    with transaction.atomic():
        advisory_xact_locks([(LockNamespace.TEST, "b"), (LockNamespace.TEST, "a")])
        set_local_lock_timeout(50)
    with connections["default"].cursor() as cursor:
        cursor.execute("SHOW lock_timeout")
        assert cursor.fetchone()[0] != "50ms"
        cursor.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()")
        assert cursor.fetchone()[0] == 0


@pytest.mark.django_db
def test_every_connection_has_timeouts():
    with connections["default"].cursor() as cursor:
        cursor.execute("SHOW lock_timeout")
        lock_timeout = cursor.fetchone()[0]
        cursor.execute("SHOW statement_timeout")
        statement_timeout = cursor.fetchone()[0]
    assert lock_timeout not in ("0", "0ms")
    assert statement_timeout not in ("0", "0ms")
