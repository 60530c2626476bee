import contextlib
import threading
import time

import pytest
from django.db import connections, transaction

from core.db import (
    advisory_xact_lock,
    advisory_xact_lock_shared,
    advisory_xact_locks,
    advisory_xact_locks_in_order,
    set_local_lock_timeout,
    try_advisory_xact_lock,
)
from core.exceptions import LockContended
from core.guards import database_refusals
from tests.core.scratch_lock import ScratchLock
from tests.races import Background, advisory_locked


@pytest.mark.django_db(transaction=True)
def test_advisory_lock_refuses_outside_atomic():
    with pytest.raises(RuntimeError, match="transaction-scoped"):
        advisory_xact_lock(ScratchLock.TEST, "x")
    with pytest.raises(RuntimeError, match="transaction-scoped"):
        try_advisory_xact_lock(ScratchLock.TEST, "x")


@pytest.mark.django_db(transaction=True)
def test_second_connection_waits_for_the_lock_then_gets_it():
    holder = advisory_locked(ScratchLock.TEST, "date", 1).start()
    threading.Timer(0.3, holder.release.set).start()
    started = time.monotonic()
    with transaction.atomic():
        advisory_xact_lock(ScratchLock.TEST, "date", 1)
    waited = time.monotonic() - started
    holder.commit()
    assert 0.2 < waited < 2.0


@pytest.mark.django_db(transaction=True)
def test_try_form_is_refused_at_once_while_held_and_free_after():
    with advisory_locked(ScratchLock.TEST, "date", 2):
        started = time.monotonic()
        with transaction.atomic():
            assert try_advisory_xact_lock(ScratchLock.TEST, "date", 2) is False
            assert try_advisory_xact_lock(ScratchLock.TEST, "date", 3) is True
        assert time.monotonic() - started < 0.5
    with transaction.atomic():
        assert try_advisory_xact_lock(ScratchLock.TEST, "date", 2) is True


@pytest.mark.django_db(transaction=True)
def test_lock_timeout_becomes_lock_contended():
    with advisory_locked(ScratchLock.TEST, "busy"):
        started = time.monotonic()
        with pytest.raises(LockContended) as refused:
            with database_refusals(), transaction.atomic():
                set_local_lock_timeout(100)
                advisory_xact_lock(ScratchLock.TEST, "busy")
        assert time.monotonic() - started < 1.0
        assert refused.value.code == "resource_locked"


@pytest.mark.django_db(transaction=True)
def test_lock_is_released_at_commit_and_set_local_does_not_leak():
    with transaction.atomic():
        advisory_xact_locks([(ScratchLock.TEST, "b"), (ScratchLock.TEST, "a")])
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


def locking_in_background(take):
    """Run ``take()`` in a transaction on its own connection: (the Background, with ``take``'s answer as its
    result, and a list that receives its backend pid)."""
    pid = []

    def run():
        with transaction.atomic():
            with connections["default"].cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                pid.append(cursor.fetchone()[0])
            return take()

    return Background(run), pid


def advisory_locks_of(pid):
    """(mode, granted) of every advisory lock the backend in ``pid`` holds or waits for, the waits first."""
    with connections["default"].cursor() as cursor:
        cursor.execute(
            "SELECT mode, granted FROM pg_locks WHERE locktype = 'advisory' AND pid = %s ORDER BY granted",
            [pid[0] if pid else 0],
        )
        return cursor.fetchall()


@pytest.mark.django_db(transaction=True)
def test_several_locks_are_taken_in_hash_order_whatever_the_input_order():
    """Deadlock freedom: with the lowest-hash key held elsewhere, a caller asking for (highest, lowest)
    waits holding nothing, because it asks for the lowest first."""
    with connections["default"].cursor() as cursor:
        cursor.execute(
            "SELECT t FROM unnest(%s::text[]) AS t ORDER BY hashtextextended(t, 0)",
            [[f"{ScratchLock.TEST.value}:{name}" for name in ("a", "b")]],
        )
        lowest, highest = (row[0].rsplit(":", 1)[1] for row in cursor.fetchall())

    with advisory_locked(ScratchLock.TEST, lowest):
        waiter, pid = locking_in_background(
            lambda: advisory_xact_locks([(ScratchLock.TEST, highest), (ScratchLock.TEST, lowest)])
        )
        deadline = time.monotonic() + 5
        waiting = False
        while not waiting and time.monotonic() < deadline:
            locks = advisory_locks_of(pid)
            blocked, granted = sum(not g for _m, g in locks), sum(g for _m, g in locks)
            waiting = blocked == 1
            time.sleep(0.01)
        assert waiting, "the second caller never queued for the held lock"
        assert granted == 0, "it took the highest-hash key before the lowest: input order, not hash order"
    assert waiter.join().error is None


@pytest.mark.django_db(transaction=True)
def test_locks_in_order_are_taken_one_after_another_each_in_its_mode():
    """(first shared, second exclusive), with the second held elsewhere: the caller holds the first, shared,
    and queues for the second; a shared holder of the first never blocks it."""
    from tests.races import OpenTransaction

    with (
        OpenTransaction(lambda: advisory_xact_lock_shared(ScratchLock.TEST, "first")),
        advisory_locked(ScratchLock.TEST, "second"),
    ):
        waiter, pid = locking_in_background(
            lambda: advisory_xact_locks_in_order((True, ScratchLock.TEST, "first"), (False, ScratchLock.TEST, "second"))
        )
        deadline, held = time.monotonic() + 5, []
        while len(held) < 2 and time.monotonic() < deadline:
            held = advisory_locks_of(pid)
            time.sleep(0.01)
        assert held == [("ExclusiveLock", False), ("ShareLock", True)], held
    assert waiter.join().error is None


@pytest.mark.django_db(transaction=True)
def test_the_statement_sent_after_locks_reads_what_their_last_holder_committed():
    """``then`` shares the locks' round trip but not their snapshot: it sees a row the holder of a lock
    committed while the caller waited for it (a read on the query's first snapshot would not)."""
    from core.models import Tenant
    from tests.races import OpenTransaction

    def hold_and_write():
        advisory_xact_lock(ScratchLock.TEST, "place")
        Tenant.objects.create(slug="written-under-the-lock", name="W")

    holder = OpenTransaction(hold_and_write)
    holder.start()
    read = ("SELECT count(*) FROM core_tenant WHERE slug = %s", ["written-under-the-lock"])
    waiter, pid = locking_in_background(
        lambda: advisory_xact_locks_in_order((False, ScratchLock.TEST, "place"), then=read)
    )
    deadline = time.monotonic() + 5
    while advisory_locks_of(pid) != [("ExclusiveLock", False)] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert advisory_locks_of(pid) == [("ExclusiveLock", False)]  # queued, its query already started
    holder.commit()
    assert waiter.join().error is None
    assert waiter.result == (1,)


def test_database_url_options_are_kept_beside_the_timeouts():
    """A ?options= in DATABASE_URL (a search_path, say) must not be dropped; the timeouts come last and win."""
    import os
    import subprocess
    import sys

    from django.conf import settings

    env = {
        **os.environ,
        "DATABASE_URL": "postgres://u@127.0.0.1:5432/db?options=-c%20search_path%3Dlockstep&sslmode=disable",
        "DJANGO_SETTINGS_MODULE": "config.settings",
    }
    script = "from django.conf import settings; print(settings.DATABASES['default']['OPTIONS']['options'])"
    options = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=settings.BASE_DIR, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert options.startswith("-c search_path=lockstep -c lock_timeout=")
    assert "-c statement_timeout=" in options


def locked_elsewhere(model, pk):
    """Whether another connection finds the row locked: its ``FOR UPDATE NOWAIT`` refused."""

    def probe():
        with transaction.atomic():
            list(model.objects.select_for_update(nowait=True).filter(pk=pk))

    outcome = Background(probe).join().outcome
    return not outcome.ok


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("held", [False, True], ids=["free", "held elsewhere"])
def test_what_a_try_lock_gates_runs_and_locks_only_where_it_got_the_lock(tenant, held):
    """One statement: the try lock, then the gated SELECT … FOR UPDATE NOWAIT only where it got it.

    Where the lock is held elsewhere, the row is not even locked: a gate checked after the row
    lock (a join filter) would lock it, and could refuse the holder its own next lock.
    """

    from core.db import tried_lock

    holder = advisory_locked(ScratchLock.TEST, "gate") if held else contextlib.nullcontext()
    with holder, transaction.atomic():
        locking = type(tenant).objects.select_for_update(nowait=True).filter(tried_lock(), pk=tenant.pk)
        gated = locking.values_list("slug").query.get_compiler("default").as_sql()
        answer = try_advisory_xact_lock(ScratchLock.TEST, "gate", gated=gated)
        row_locked = locked_elsewhere(type(tenant), tenant.pk)
    assert (answer, row_locked) == (((False, None), False) if held else ((True, tenant.slug), True))
