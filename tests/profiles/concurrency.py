"""Profiles' interleavings: a path paused at its COMMIT, and five profiles one step from a cycle.

The lock holders and waiters themselves are the shared ones in tests/races.py.
"""

from tests.races import Background, OpenTransaction, lock_waiters, row_locked, wait_until


def in_flight(operation):
    """Run ``operation`` in a transaction on another connection, kept open: returns ``finish``.

    ``finish()`` commits it and returns what ``operation`` returned (or raises what it raised).
    """
    return OpenTransaction(operation).start().commit


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

    with row_locked(get_user_model().objects.filter(pk=user.pk)):
        first = Background(paused)
        wait_until(lambda: first.done.is_set() or lock_waiters() >= 1)
        assert not first.done.is_set(), first.outcome  # it must be paused at its COMMIT, not refused
        second = Background(other)
        wait_until(lambda: second.done.is_set() or lock_waiters() >= 2)
    return first.join().outcome, second.join().outcome


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
