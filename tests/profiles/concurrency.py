"""Helpers for tests that hold a lock from a second connection while another path runs."""

import threading

from django.db import connections, transaction


def in_flight(operation):
    """Run ``operation`` in a thread, inside a transaction kept open until the returned ``finish()``.

    Returns ``finish``; ``finish()`` commits the held transaction and returns what ``operation``
    returned. Whatever locks ``operation`` took stay held until then.
    """
    started, release, result = threading.Event(), threading.Event(), {}

    def run():
        try:
            with transaction.atomic():
                result["value"] = operation()
                started.set()
                release.wait(20)
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            result["error"] = exc
            started.set()
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    assert started.wait(10)
    assert "error" not in result, result

    def finish():
        release.set()
        thread.join(20)
        assert not thread.is_alive()
        if "error" in result:
            raise result["error"]
        return result.get("value")

    return finish


def waiting_on_locks():
    """How many backends of this test database are waiting for a lock right now."""
    with connections["default"].cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE NOT l.granted AND a.datname = current_database()"
        )
        return cursor.fetchone()[0]


def wait_until(condition, *, timeout=5.0, step=0.005):
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(step)


class Thread:
    """``target()`` on its own connection; ``outcome`` (a core.storm.Outcome) once joined."""

    def __init__(self, target):
        from core.storm import Outcome

        self._outcome_class = Outcome
        self.outcome = None
        self.thread = threading.Thread(target=self._run, args=(target,))
        self.thread.start()

    def _run(self, target):
        try:
            self.outcome = self._outcome_class(value=target())
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            self.outcome = self._outcome_class(error=exc)
        finally:
            connections.close_all()

    @property
    def done(self):
        return not self.thread.is_alive()

    def join(self, timeout=20):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "a racing path hung"
        return self.outcome


def paused_at_commit(paused, other, *, user):
    """Run ``paused`` until it waits at COMMIT, then ``other``; let ``paused`` commit; return both outcomes.

    ``user``'s row is held FOR UPDATE from another connection: ``paused`` must record an audit
    entry with that actor, and Django's foreign keys are checked at COMMIT (DEFERRABLE INITIALLY
    DEFERRED), so ``paused`` runs every statement - its locks, its cycle check, its writes -
    and then waits on the user row, its own locks held. ``other`` (with another actor) starts
    then; the user row is released as soon as ``other`` has finished or waits for a lock itself.
    Everything happens well within lock_timeout.
    """
    from django.contrib.auth import get_user_model

    release = in_flight(lambda: list(get_user_model().objects.select_for_update().filter(pk=user.pk)))
    try:
        first = Thread(paused)
        wait_until(lambda: first.done or waiting_on_locks() >= 1)
        assert not first.done, first.outcome  # it must be paused at its COMMIT, not refused
        second = Thread(other)
        wait_until(lambda: second.done or waiting_on_locks() >= 2)
    finally:
        release()
    return first.join(), second.join()


def five_for_a_cycle(tenant, factory):
    """Five profiles where an undo and a re-parenting, each sound alone, together close a cycle.

    A.father = B, B.father = C, D.father = E; E.father was A, then cleared (entry ``undo_me``).
    Undoing ``undo_me`` gives E.father = A again; re-parenting C to father D gives C.father = D.
    Both: C -> D -> E -> A -> B -> C, a cycle of five.
    """
    from profiles.models import Profile, ProfileAuditLog

    c = factory(tenant=tenant, first_name="C")
    b = factory(tenant=tenant, first_name="B", father=c)
    a = factory(tenant=tenant, first_name="A", father=b)
    e = factory(tenant=tenant, first_name="E", father=a)
    d = factory(tenant=tenant, first_name="D", father=e)
    Profile.objects.update_profile(e.pk, tenant=tenant, version=1, father=None)
    undo_me = ProfileAuditLog.objects.get(profile=e, action="update")
    return {"a": a, "b": b, "c": c, "d": d, "e": e, "undo_me": undo_me}
