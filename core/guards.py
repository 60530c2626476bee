"""The guard contract every app follows (docs/architecture.md, "The guard contract").

1. **Who opens the transaction.** A guarded manager method is decorated ``@guarded``:
   it runs inside ``transaction.atomic(using=self.db)`` (a savepoint when the caller
   already has one), and every database refusal it meets is translated, *outside*
   the failed block, into a domain error. ``@guarded(joins=True)`` marks a method
   that must join the caller's transaction (a service composes several of them):
   it asserts one is open and leaves translation to the caller's ``@guarded`` or
   ``database_refusals()``. ``@guarded(statement=True)`` marks a method whose whole
   work is ONE statement (``core.decide``): a statement is atomic by itself, so no
   BEGIN and COMMIT are sent for it, only its refusals translated. Inside a caller's
   transaction it takes no savepoint either: a refusal named from the row changed
   nothing, and a statement the database refused (a trigger, a lock timeout) marks
   that transaction for rollback, as ``atomic(savepoint=False)`` would.
2. **One translator.** ``database_refusals()`` turns SQLSTATE 55P03 (NOWAIT refused,
   lock_timeout expired) into ``LockContended`` (409 ``resource_locked`` with
   Retry-After), a state-machine trigger's refusal into ``TransitionRefused`` (409
   ``invalid_transition``) and a named constraint into the domain error its app
   registered with ``constraint_errors``. The API, the admin and the commands all
   see a DomainError, never a traceback.
3. **One clock.** ``ClockNow()`` is ``clock_timestamp()``: the database clock at the
   moment the expression is evaluated. Django's ``Now()`` is
   ``STATEMENT_TIMESTAMP()``, fixed before the statement waits for a row lock, so a
   guard that judges expiry with it can act after the deadline. ``database_clock()``
   reads the same clock in Python.
4. **Sweeps run row by row.** ``@sweep`` marks a method that changes many rows, each
   through a ``@guarded`` operation in its own transaction: a sweep never holds one
   row's locks while waiting for the next row's (that would take the global lock
   order backwards). It returns a ``SweepResult``.
"""

import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import wraps

import psycopg.errors
from django.db import (
    DEFAULT_DB_ALIAS,
    DatabaseError,
    IntegrityError,
    InternalError,
    OperationalError,
    connections,
    transaction,
)
from django.db.models import DateField, DateTimeField, Func

from core.exceptions import DatabaseTimeout, DatabaseUnavailable, LockContended, TransitionRefused

logger = logging.getLogger(__name__)

# --- transactions --------------------------------------------------------------


def require_atomic(using=DEFAULT_DB_ALIAS):
    """Raise RuntimeError unless a transaction is open on ``using``: the caller owns it."""
    connection = connections[using]
    if not connection.in_atomic_block:
        raise RuntimeError("This operation must run inside the caller's transaction.atomic().")
    return connection


# --- the clock -------------------------------------------------------------------


class ClockNow(Func):
    """``clock_timestamp()``: the database clock when evaluated (after any lock wait)."""

    template = "clock_timestamp()"
    output_field = DateTimeField()

    def __init__(self):
        super().__init__()


def database_clock(using=DEFAULT_DB_ALIAS):
    """The database clock, now (``clock_timestamp()``, not the transaction start)."""
    with connections[using].cursor() as cursor:
        cursor.execute("SELECT clock_timestamp()")
        return cursor.fetchone()[0]


# A shop's day: the database clock, now, read on the calendar of its time zone (a tenant's ``time_zone``).
LOCAL_TODAY_SQL = "(clock_timestamp() AT TIME ZONE {})::date"


class LocalToday(Func):
    """The date it is now (``clock_timestamp()``) in ``time_zone`` (an expression: ``F("tenant__time_zone")``),
    plus ``days``: "today" as the shop whose rows they are counts it, whatever the server's zone."""

    output_field = DateField()

    def __init__(self, time_zone, days=0):
        super().__init__(time_zone)
        self.template = "(" + LOCAL_TODAY_SQL.format("%(expressions)s") + f" + {int(days)})"


def tenant_today(tenant, using=DEFAULT_DB_ALIAS):
    """The date it is now for ``tenant`` (a Tenant or its id), by the database clock read on the calendar of
    the time zone its row holds now."""
    sql = f"SELECT {LOCAL_TODAY_SQL.format('time_zone')} FROM core_tenant WHERE id = %s"  # noqa: S608 - a constant
    with connections[using].cursor() as cursor:
        cursor.execute(sql, [getattr(tenant, "pk", tenant)])
        return cursor.fetchone()[0]


# --- refusals from the database --------------------------------------------------

# Constraint (or trigger) name -> the domain error a violation of it means.
_CONSTRAINT_ERRORS = {}

# SQLSTATE a state-machine trigger raises, with the trigger's name as the constraint.
TRANSITION_SQLSTATE = "23514"  # check_violation


def constraint_errors(mapping):
    """Register ``{constraint_name: DomainError subclass or factory}`` for ``database_refusals``."""
    _CONSTRAINT_ERRORS.update(mapping)


def cause_of(exc, error_class):
    cause = exc
    while cause is not None:
        if isinstance(cause, error_class):
            return cause
        cause = cause.__cause__
    return None


def is_lock_error(exc):
    """True for SQLSTATE 55P03: NOWAIT refused, or lock_timeout expired."""
    return cause_of(exc, psycopg.errors.LockNotAvailable) is not None


def is_deadlock(exc):
    """True for SQLSTATE 40P01: PostgreSQL broke a deadlock by rolling this transaction back."""
    return cause_of(exc, psycopg.errors.DeadlockDetected) is not None


def is_serialization_failure(exc):
    """True for SQLSTATE 40001: a transaction run SERIALIZABLE or REPEATABLE READ (``OPTIONS["isolation_level"]``)
    met a concurrent change and was rolled back whole. Under the default READ COMMITTED it does not occur."""
    return cause_of(exc, psycopg.errors.SerializationFailure) is not None


def constraint_name(exc):
    """The name of the constraint (or transition trigger) an IntegrityError violated, if any."""
    diag = getattr(cause_of(exc, psycopg.Error), "diag", None)
    return getattr(diag, "constraint_name", None)


def refusal_for(exc):
    """The DomainError a database error means, or None when it is not a refusal (a bug, an outage)."""
    if isinstance(exc, OperationalError) and is_lock_error(exc):
        return LockContended()
    if isinstance(exc, OperationalError) and is_deadlock(exc):
        # Rolled back whole, so safe to retry like any lock conflict; but every path takes its locks in
        # the one global order (docs/lock-order.md), so a deadlock is a slip to find: said in the log.
        logger.warning("deadlock: PostgreSQL rolled this transaction back (%s)", str(cause_of(exc, psycopg.Error)))
        return LockContended()
    if isinstance(exc, OperationalError) and is_serialization_failure(exc):
        return LockContended()  # rolled back whole: the same "try again shortly"
    if isinstance(exc, IntegrityError):
        name = constraint_name(exc)
        if name is not None and name.endswith("_transition"):
            detail = getattr(getattr(cause_of(exc, psycopg.Error), "diag", None), "message_detail", None) or ""
            old, _sep, new = detail.partition("->")
            return TransitionRefused(old=old or "?", new=new or "?")
        mapped = _CONSTRAINT_ERRORS.get(name)
        if mapped is not None:
            return mapped()
    return None


# SQLSTATEs of a database that did not answer, and may on retry: connection exceptions (08), insufficient
# resources (53: too many connections, out of memory or disk), a server shutting down or starting (57P01-57P03),
# a transaction ended by idle_in_transaction_session_timeout (25P03).
OUTAGE_CLASSES = ("08", "53")
OUTAGES = ("57P01", "57P02", "57P03", "25P03")


def outage_for(exc):
    """DatabaseTimeout (57014, statement_timeout) or DatabaseUnavailable (``OUTAGE_CLASSES``, ``OUTAGES``, or a
    connection that failed before the server said anything) for a database error that may pass on retry; None
    for a refusal (``refusal_for``) or anything else (a bug, a corrupted index, a program limit: retrying it
    would fail the same way, and it must fail loudly)."""
    if not isinstance(exc, OperationalError | InternalError) or refusal_for(exc) is not None:
        return None
    sqlstate = getattr(cause_of(exc, psycopg.Error), "sqlstate", None)
    if sqlstate == "57014":
        return DatabaseTimeout()
    if sqlstate is None and isinstance(exc, OperationalError):
        return DatabaseUnavailable()
    if sqlstate is not None and (sqlstate[:2] in OUTAGE_CLASSES or sqlstate in OUTAGES):
        return DatabaseUnavailable()
    return None


@contextmanager
def database_refusals():
    """Translate a database refusal raised by the block into its domain error, and a database that did not
    answer into DatabaseTimeout or DatabaseUnavailable (``retry_later``: a command exits 3, the API answers 503
    with Retry-After, the admin says so on the page).

    Wrap it *around* ``transaction.atomic()``, never inside: the failed block must
    finish rolling back before the error is translated.
    """
    try:
        yield
    except (OperationalError, IntegrityError, InternalError) as exc:
        refusal = refusal_for(exc) or outage_for(exc)
        if refusal is None:
            raise
        if isinstance(refusal, DatabaseUnavailable):
            logger.warning("%s: %s", refusal.code, exc)
        raise refusal from exc


def guarded(method=None, *, joins=False, statement=False):
    """Mark a manager method as a guarded operation (see the module docstring).

    ``@guarded``: open ``transaction.atomic(using=self.db)`` and translate database
    refusals outside it. ``@guarded(joins=True)``: assert the caller's transaction.
    ``@guarded(statement=True)``: one statement, translated, no transaction of its own.
    The method gets ``alters_data = True`` and ``guard`` ("opens", "joins" or "statement"),
    which ``tests/core/test_guard_contract.py`` checks on every manager.
    """

    def decorate(function):
        if statement:

            @wraps(function)
            def wrapper(self, *args, **kwargs):
                with database_refusals():
                    try:
                        return function(self, *args, **kwargs)
                    except DatabaseError:
                        if connections[self.db].in_atomic_block:  # the caller's transaction is aborted: say so
                            transaction.set_rollback(True, using=self.db)
                        raise

        elif joins:

            @wraps(function)
            def wrapper(self, *args, **kwargs):
                require_atomic(self.db)
                return function(self, *args, **kwargs)

        else:

            @wraps(function)
            def wrapper(self, *args, **kwargs):
                with database_refusals(), transaction.atomic(using=self.db):
                    return function(self, *args, **kwargs)

        wrapper.alters_data = True
        wrapper.guard = "statement" if statement else "joins" if joins else "opens"
        return wrapper

    return decorate(method) if method is not None else decorate


@dataclass
class SweepResult:
    """How a sweep went: rows changed, and rows left for the next run with the refusal that stopped each."""

    done: int = 0
    skipped: list = field(default_factory=list)  # [(row id, DomainError)]


def sweep(method):
    """Mark a sweep: one ``@guarded`` operation per row, each its own transaction (see the module docstring).

    No transaction is opened around the loop; a refusal raised outside the per-row
    operations is still translated. Sets ``alters_data`` and ``guard = "sweep"``.
    """

    @wraps(method)
    def wrapper(self, *args, **kwargs):
        with database_refusals():
            return method(self, *args, **kwargs)

    wrapper.alters_data = True
    wrapper.guard = "sweep"
    return wrapper
