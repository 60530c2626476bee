"""Django's PostgreSQL backend, with Lockstep's timeouts in effect inside every transaction, a
transaction's BEGIN sent with its first statement, and a health check that costs a round trip
only when the connection has heard from the server or has been idle a while.

Directly connected, the timeouts are startup parameters of each connection (config/settings.py).
Behind a transaction-mode pooler (PgBouncer: ``DATABASE_POOL_MODE=transaction``) startup
parameters never reach the server, and a session ``SET`` would stay on a server connection the
pooler hands to another client next. So each transaction sets them itself, with ``set_config(…,
true)`` (``SET LOCAL``): one statement as it begins, gone at its COMMIT or ROLLBACK. Statements
outside a transaction (autocommit reads) get the server's defaults: set those too with
``ALTER ROLE … SET lock_timeout …`` (docs/operations.md). A guard that is one statement, run
outside any transaction, carries the timeouts in its own query (``execute_carrying_timeouts``).

**BEGIN with the first statement.** psycopg, left to open transactions itself, sends BEGIN as a
round trip of its own before a transaction's first statement: one per guarded operation, as
much as any of its statements. Here psycopg stays in autocommit and Django's transaction is
opened by this backend: ``atomic()`` only notes it is owed (``_start_transaction_under_autocommit``,
Django's own hook for backends that begin explicitly), and the cursor sends the opening
(``BEGIN``, and behind a pooler the timeouts) in the same query as the first statement, then
moves past its results, so the caller reads its own statement's rows, row count and errors as
before. COMMIT and ROLLBACK are psycopg's, as before (each a round trip, skipped when nothing
was begun). Statements sent as one query run in order on one server connection: behind a
transaction-mode pooler the transaction starts with them and ends at COMMIT, as it would.
"""

import datetime
import select
import time

import psycopg
from django.conf import settings
from django.db.backends import utils
from django.db.backends.postgresql import base
from psycopg import ProgrammingError
from psycopg.pq import Format, TransactionStatus

# PostgreSQL parameter -> the setting (milliseconds) that configures it
TIMEOUTS = {
    "lock_timeout": "LOCK_TIMEOUT_MS",
    "statement_timeout": "STATEMENT_TIMEOUT_MS",
    "idle_in_transaction_session_timeout": "IDLE_IN_TRANSACTION_TIMEOUT_MS",
}


def set_timeouts_sql(settings_dict):
    """One statement setting every timeout for the current transaction only, from the settings now
    (a connection's own ``settings_dict`` may override one: a test that waits on purpose)."""
    values = {name: int(settings_dict.get(key, getattr(settings, key))) for name, key in TIMEOUTS.items()}
    return "SELECT " + ", ".join(f"set_config('{name}', '{value}', true)" for name, value in values.items())


def execute_carrying_timeouts(cursor, sql, params):
    """Execute ``sql``, a statement that may run outside any transaction, carrying the timeouts where
    it must (``DatabaseWrapper.carried_timeouts``); the cursor is left on ``sql``'s own result.

    Behind a transaction-mode pooler no startup parameter sets the timeouts, and a statement sent
    outside a transaction opens none for ``transaction_opening`` to set them in: it carries them,
    in the same query (one implicit transaction, so SET LOCAL holds). The backend puts them in
    front after Django's execute wrappers ran, so those (the history context's injector) see
    ``sql`` as it is.
    """
    cursor.carries_timeouts = True
    try:
        cursor.execute(sql, params)
    finally:
        cursor.carries_timeouts = False


class UtcTimestamptzLoader:
    """psycopg's own timestamptz loader (its C one when psycopg's binary package is installed), under
    the ``timezone`` Django's ``create_cursor`` compares with the connection's.

    Django loads every timestamptz through a Python subclass of psycopg's Python loader that
    stamps Django's time zone on the result: about 4 µs a value, against 0.2 µs through the C
    loader, which returns the same datetime in the session's time zone; Django sets that to UTC
    on connect. Where Django's time zone is no longer UTC (a test overriding ``USE_TZ``), Django's
    check sees the difference and registers its own loader on the cursor, as it would.
    """

    timezone = datetime.UTC
    format = Format.TEXT
    _native = psycopg.adapters.get_loader(base.TIMESTAMPTZ_OID, Format.TEXT)

    def __new__(cls, oid, context=None):
        return cls._native(oid, context)


class DatabaseWrapper(base.DatabaseWrapper):
    def get_connection_params(self):
        params = super().get_connection_params()
        if self.timezone is datetime.UTC:  # Django's loader would stamp UTC on what the session says is UTC
            params["context"].register_loader("timestamptz", UtcTimestamptzLoader)
        return params

    # A connection quiet for longer than this gets the real check all the same: a peer gone without a
    # word (a dropped NAT or firewall entry, a failover without FIN) leaves nothing to read.
    HEALTH_CHECK_QUIET_SECONDS = 30.0
    health_checked_at = None  # time.monotonic() of the connection's opening or last check (real or skipped)

    def connect(self):
        super().connect()
        self.health_checked_at = time.monotonic()  # a connection just opened needs no check (Django's view too)

    def close_if_health_check_failed(self):
        """Django's check before a request reuses the connection, without the ``SELECT 1`` when quiet.

        Django sends that statement before each request's first one (CONN_HEALTH_CHECKS): one
        round trip per request, as much as a guarded write's. A connection the server has said
        nothing on since its last statement, used by a request within the last
        ``HEALTH_CHECK_QUIET_SECONDS``, is as usable as that statement left it (errors are checked
        apart, with the round trip: ``close_if_unusable_or_obsolete``); one that heard something,
        or has been idle longer, gets the real check, and is closed when it fails it.
        """
        if self.connection is None or not self.health_check_enabled or self.health_check_done:
            return super().close_if_health_check_failed()
        now, last = time.monotonic(), self.health_checked_at
        self.health_checked_at = now
        recently = last is not None and now - last < self.HEALTH_CHECK_QUIET_SECONDS
        if recently and not self.pool and not heard_from_server(self.connection):
            self.health_check_done = True
            return
        super().close_if_health_check_failed()

    def _set_autocommit(self, autocommit):
        """psycopg stays in autocommit whatever Django asks: a transaction Django wants is opened
        here, with its first statement (``transaction_opening``).

        Back to autocommit with a transaction still open on the server (manual mode, left without
        COMMIT or ROLLBACK) is refused, as psycopg refuses it: Django would take the connection for
        idle while the server holds the work, and a later COMMIT would commit it.
        """
        status = TransactionStatus(self.connection.pgconn.transaction_status)
        if autocommit and status != TransactionStatus.IDLE:
            with self.wrap_database_errors:
                raise ProgrammingError(f"can't change autocommit now: transaction status {status.name}")
        if not self.connection.autocommit:
            super()._set_autocommit(True)

    def create_cursor(self, name=None):
        cursor = super().create_cursor(name)
        if name:  # Django holds a named cursor past COMMIT outside a transaction: Django's, not psycopg's
            cursor._withhold = self.autocommit  # (Django reads psycopg's, always on here)
        return cursor

    def _start_transaction_under_autocommit(self):
        """``atomic()``'s BEGIN: owed from now on (Django sets ``autocommit`` False), sent with the first statement."""

    def transaction_opening(self):
        """The statements a transaction Django wants but the server has not begun opens with, or ().

        BEGIN (with the connection's isolation level, as psycopg would send it) and, behind a
        transaction-mode pooler, the statement setting the timeouts for the transaction. There the
        transaction's first statement is no longer its first query, so ``SET TRANSACTION`` is refused:
        give the isolation level to the connection instead (``OPTIONS["isolation_level"]``), BEGIN carries it.
        """
        if self.autocommit or self.connection.pgconn.transaction_status != TransactionStatus.IDLE:
            return ()
        begin = self.connection._get_tx_start_command().decode()  # psycopg's own BEGIN for this connection
        if self.settings_dict.get("TIMEOUTS_PER_TRANSACTION"):
            return (begin, set_timeouts_sql(self.settings_dict))
        return (begin,)

    def carried_timeouts(self):
        """What a statement sent outside a transaction carries (``execute_carrying_timeouts``): behind
        a transaction-mode pooler, the statement setting the timeouts; else nothing."""
        if self.settings_dict.get("TIMEOUTS_PER_TRANSACTION") and not self.in_atomic_block:
            return (set_timeouts_sql(self.settings_dict),)
        return ()

    def open_transaction(self):
        """Send the owed opening, if any, on its own (before what cannot carry it: a named cursor,
        executemany, COPY)."""
        opening = self.transaction_opening()
        if opening:
            with self.connection.cursor() as cursor:
                for statement in opening:
                    cursor.execute(statement)

    def make_cursor(self, cursor):
        return CursorWrapper(cursor, self)

    def make_debug_cursor(self, cursor):
        return CursorDebugWrapper(cursor, self)


class _OpensOwedTransaction:
    """A cursor that sends the transaction's opening (or the timeouts a statement outside one
    carries) in the same query as its first statement, after Django's execute wrappers."""

    carries_timeouts = False  # for one statement, set by execute_carrying_timeouts

    def _execute(self, sql, params, *ignored_wrapper_args):
        opening = self.db.transaction_opening()
        if opening and (not isinstance(sql, str) or getattr(self.cursor, "name", None)):  # composed SQL, a named cursor
            self.db.open_transaction()
            return super()._execute(sql, params, *ignored_wrapper_args)
        if not opening and self.carries_timeouts:
            opening = self.db.carried_timeouts()
        if not opening:
            return super()._execute(sql, params, *ignored_wrapper_args)
        result = super()._execute("; ".join((*opening, sql)), params, *ignored_wrapper_args)
        for _statement in opening:  # past the opening's results: the caller reads its own statement's
            self.cursor.nextset()
        return result

    def _executemany(self, sql, param_list, *ignored_wrapper_args):
        self.db.open_transaction()
        return super()._executemany(sql, param_list, *ignored_wrapper_args)

    # psycopg's own, passed through by Django's wrapper untouched: the opening goes first.
    def copy(self, *args, **kwargs):
        self.db.open_transaction()
        return self.cursor.copy(*args, **kwargs)

    def stream(self, *args, **kwargs):
        self.db.open_transaction()
        return self.cursor.stream(*args, **kwargs)


class CursorWrapper(_OpensOwedTransaction, utils.CursorWrapper):
    pass


class CursorDebugWrapper(_OpensOwedTransaction, utils.CursorDebugWrapper):
    pass


def heard_from_server(connection):
    """Whether an idle psycopg connection has anything to read, or is known to be gone.

    Between two requests a healthy connection hears nothing: the server answers only what it
    is asked. A server that ends the session (a restart, ``pg_terminate_backend``, an idle
    timeout, a pooler going away) sends its FATAL message or closes the socket, and either
    makes it readable. A notice or a parameter change can too: then the real check runs.
    """
    if connection.closed or connection.broken:
        return True
    poller = select.poll()
    poller.register(connection.fileno(), select.POLLIN | select.POLLPRI)
    return bool(poller.poll(0))  # POLLERR and POLLHUP are always reported
