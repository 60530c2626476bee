"""Transaction-scoped advisory locks and lock-error translation.

Advisory lock keys are computed by PostgreSQL itself:
``hashtextextended('<namespace>:<key>', 0)``, a stable 64-bit hash, so any
process (a psql session, pgbench, another service) can take the same lock.
Locks are always ``pg_advisory_xact_lock`` - released at commit or rollback,
never leaked through a transaction-pooling bouncer.
"""

import enum

from django.db import DEFAULT_DB_ALIAS, connections, transaction

from core.guards import require_atomic


class LockNamespace(enum.Enum):
    """Registry of advisory-lock namespaces. Never rename a value: it is part of the key."""

    BOOKING_DATE = "bookings.date"
    # per package: checkouts and payments take it shared, package edits and deletes exclusive
    BOOKING_PACKAGE = "bookings.package"
    AUDIT_UNDO = "profiles.audit_undo"
    PROFILE_TREE = "profiles.tree"  # per tenant: serializes parent-edge changes (cycle check)
    IDEMPOTENCY_KEY = "core.idempotency_key"
    # per provider dispute: its events judged one at a time (an opening read while its close commits)
    PAYMENT_DISPUTE = "bookings.dispute"
    # per tenant: a change that takes an owner away counts the owners left one at a time (at commit,
    # in the membership_keeps_an_owner trigger)
    TENANT_OWNERS = "core.tenant_owners"


def _require_atomic(using):
    if not connections[using].in_atomic_block:
        raise RuntimeError("Advisory locks are transaction-scoped: call this inside transaction.atomic().")
    return require_atomic(using)


def lock_key(namespace: LockNamespace, *parts) -> str:
    return ":".join([namespace.value, *(str(part) for part in parts)])


def _take_advisory(connection, sql, key, shared=None, then=None, gated=None, condition=()):
    """Run ``sql``, which takes the advisory lock(s) on ``key``; return its answer (a try lock: got it?).

    ``key`` is a key or a list of keys; ``shared``, when given, says for each key of the list whether
    its lock is shared. ``then``, a statement (SQL, parameters), is sent in the same query after
    ``sql`` and its first row is returned instead (see ``advisory_xact_locks_in_order``). ``gated``,
    a SELECT filtering on ``TRIED``, runs in the same statement as a try lock and only where it got
    the lock (see ``try_advisory_xact_lock``). ``condition``: the parameters of a condition ``sql`` ends
    with (``advisory_xact_locks_in_order``'s ``only_if``). The one place every advisory lock is taken: a control
    test switches locks off here (tests/conftest.py, ``locks_switched_off``) to run the product's own
    code without them.
    """
    params = [key] if shared is None else [key, shared]
    params += condition
    if then is not None:
        sql, params = f"{sql}; {then[0]}", [*params, *then[1]]
    if gated is not None:
        sql, params = GATED.format(lock=sql, gated=gated[0]), [*params, *gated[1]]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        if then is not None:
            while cursor.nextset():  # the last statement's rows are the last result
                pass
        if then is not None or gated is not None:
            return cursor.fetchone()
        row = cursor.fetchone()  # none when advisory_xact_locks was given no key
        return row and row[0]


# A try lock and a SELECT run only where it got the lock, in one statement. The CTE is evaluated once
# (MATERIALIZED, and volatile); ``TRIED`` in the SELECT's WHERE is a constant for it, which the planner
# checks before the scan, below any FOR UPDATE: where the lock was not got, no row is read or locked.
TRIED = "lockstep_tried.got"
GATED = (
    "WITH lockstep_tried(got) AS MATERIALIZED ({lock}) "
    "SELECT lockstep_tried.got, gated.* FROM lockstep_tried LEFT JOIN LATERAL ({gated}) AS gated ON true"
)


def tried_lock():
    """The filter a ``gated`` SELECT of ``try_advisory_xact_lock`` carries: true where the try lock was got."""
    from django.db.models import BooleanField
    from django.db.models.expressions import RawSQL

    return RawSQL(TRIED, [], output_field=BooleanField())


def advisory_xact_lock(namespace: LockNamespace, *parts, using=DEFAULT_DB_ALIAS):
    """Wait for the advisory lock on (namespace, parts) until the transaction ends.

    The wait is bounded by the connection's lock_timeout; expiry raises
    OperationalError (SQLSTATE 55P03), which ``core.guards.database_refusals`` turns
    into LockContended.
    """
    sql = "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))"
    _take_advisory(_require_atomic(using), sql, lock_key(namespace, *parts))


def advisory_xact_lock_shared(namespace: LockNamespace, *parts, using=DEFAULT_DB_ALIAS):
    """Wait for the advisory lock on (namespace, parts) in shared mode until the transaction ends.

    Shared holders do not block each other; they block (and wait for) an exclusive
    ``advisory_xact_lock`` on the same key. Bounded by lock_timeout like the exclusive form.
    """
    sql = "SELECT pg_advisory_xact_lock_shared(hashtextextended(%s, 0))"
    _take_advisory(_require_atomic(using), sql, lock_key(namespace, *parts))


def advisory_xact_locks(keys, using=DEFAULT_DB_ALIAS):
    """Take several advisory locks in one statement, in sorted hash order (no deadlocks).

    ``keys`` is an iterable of (namespace, *parts) tuples.
    """
    sql = (
        "SELECT pg_advisory_xact_lock(k) FROM "
        "(SELECT hashtextextended(t, 0) AS k FROM unnest(%s::text[]) AS t ORDER BY 1) AS ordered"
    )
    _take_advisory(_require_atomic(using), sql, sorted({lock_key(key[0], *key[1:]) for key in keys}))


def advisory_xact_locks_in_order(*locks, only_if=None, then=None, using=DEFAULT_DB_ALIAS):
    """Take several advisory locks in one round trip, one after another in the order given.

    ``locks``: ``(shared, namespace, *parts)`` tuples; each waits as ``advisory_xact_lock_shared``
    (``shared`` true) or ``advisory_xact_lock`` would, bounded by lock_timeout. For a path whose
    locks follow the global order (docs/lock-order.md): ``unnest`` reads its arrays in order and
    the lock of each row is taken before the next row is read, as two statements would.

    ``only_if``: a condition (SQL, parameters) of no row, judged once before the first lock: where it
    is false no lock is taken (a caller that names another tenant's package never queues for, nor
    holds, that tenant's locks; ``then`` still runs and tells the caller what it named).

    ``then``: a statement (SQL, parameters) to run once every lock is held, sent in the same
    query; its first row is returned (None when it selects none). Two statements of one query
    run in order, each on its own snapshot (READ COMMITTED): ``then`` sees every commit of the
    locks' previous holders, as a statement sent after them would.
    """
    sql = (
        "SELECT CASE WHEN t.shared THEN pg_advisory_xact_lock_shared(hashtextextended(t.key, 0))"
        " ELSE pg_advisory_xact_lock(hashtextextended(t.key, 0)) END"
        " FROM unnest(%s::text[], %s::boolean[]) AS t(key, shared)"
    )
    keys = [lock_key(namespace, *parts) for _shared, namespace, *parts in locks]
    shared, condition = [bool(lock[0]) for lock in locks], ()
    if only_if is not None:  # an uncorrelated condition: the planner judges it once, before the scan
        sql, condition = f"{sql} WHERE {only_if[0]}", tuple(only_if[1])
    return _take_advisory(_require_atomic(using), sql, keys, shared, then, condition=condition)


def try_advisory_xact_lock(namespace: LockNamespace, *parts, gated=None, using=DEFAULT_DB_ALIAS):
    """Take the advisory lock if it is free; return False at once if another transaction holds it.

    ``gated``: a SELECT (SQL, parameters) whose WHERE includes ``tried_lock()``, run in the same
    statement, and only where the lock was got (its row locks are not even tried where it was
    not): returns ``(got, *the SELECT's first row)``, its columns None where it found none.
    """
    sql = "SELECT pg_try_advisory_xact_lock(hashtextextended(%s, 0))"
    return _take_advisory(_require_atomic(using), sql, lock_key(namespace, *parts), gated=gated)


LOCAL_LOCK_TIMEOUT = "SELECT set_config('lock_timeout', %s, true)"


def set_local_lock_timeout(milliseconds: int, using=DEFAULT_DB_ALIAS):
    """Tighten lock_timeout for the rest of this transaction only (SET LOCAL cannot leak)."""
    connection = _require_atomic(using)
    with connection.cursor() as cursor:
        cursor.execute(LOCAL_LOCK_TIMEOUT, [f"{int(milliseconds)}ms"])


def after_local_lock_timeout(statement, milliseconds: int):
    """``statement`` (SQL, parameters) preceded by ``set_local_lock_timeout``'s, in the same round trip.

    Two statements in one query, run in order: the timeout is in force before the statement
    waits for anything. The caller reads the last result (``cursor.nextset()``; ``Prepared``
    does). Only inside a transaction, like ``set_local_lock_timeout``.
    """
    sql, params = statement
    return f"{LOCAL_LOCK_TIMEOUT}; {sql}", [f"{int(milliseconds)}ms", *params]


def update_skipping_locked(queryset, *, batch=1000, **changes):
    """Run ``queryset.update(**changes)`` ``batch`` rows at a time, each batch its own transaction, never waiting
    for a row another transaction holds: skip it, for the next run. Return how many rows changed.

    For sweeps of rows that read as swept already (an expiry every reader judges by the clock): one UPDATE over
    the whole backlog waited for any row a confirm or a consume held, and past lock_timeout (or, for a large
    backlog, statement_timeout) cancelled the run, every run, for as long as the row stayed held. Each batch
    is ``UPDATE … WHERE pk IN (SELECT pk … ORDER BY pk LIMIT batch FOR NO KEY UPDATE SKIP LOCKED) AND
    <the queryset's conditions>``: the rows it locked are judged again as the UPDATE writes them.
    """
    return _in_batches_skipping_locked(queryset, batch, lambda rows: rows.update(**changes), no_key=True)


def delete_skipping_locked(queryset, *, batch=1000):
    """Run ``queryset.delete()`` ``batch`` rows at a time, each batch its own transaction, never waiting for a row
    another transaction holds: skip it, for the next run. Return how many rows went.

    For prunes of rows that no longer count (an expired Idempotency-Key record, a lapsed rate-limit bucket): one
    DELETE over a backlog large enough ran past statement_timeout and deleted nothing, every run, the backlog
    only growing. Each batch is ``DELETE … WHERE pk IN (SELECT pk … ORDER BY pk LIMIT batch FOR UPDATE SKIP
    LOCKED) AND <the queryset's conditions>``: the rows it locked are judged again as it deletes them.
    """
    return _in_batches_skipping_locked(queryset, batch, lambda rows: rows.delete()[0], no_key=False)


def _in_batches_skipping_locked(queryset, batch, act, *, no_key):
    """``act(rows)`` on ``batch`` rows of ``queryset`` at a time, the ones no other transaction holds (locked here,
    FOR NO KEY UPDATE or, for a delete, FOR UPDATE), each batch its own transaction; the total ``act`` returned."""
    using, done = queryset.db, 0
    while True:
        with transaction.atomic(using=using):
            locked = queryset.order_by("pk").select_for_update(skip_locked=True, no_key=no_key)
            n = act(queryset.filter(pk__in=locked.values("pk")[:batch]))
        done += n
        if n < batch:
            return done
