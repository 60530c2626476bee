"""Django's PostgreSQL backend, with Lockstep's timeouts in effect inside every transaction, and a
health check that costs a round trip only when the connection has heard from the server.

Directly connected, the timeouts are startup parameters of each connection (config/settings.py).
Behind a transaction-mode pooler (PgBouncer: ``DATABASE_POOL_MODE=transaction``) startup
parameters never reach the server, and a session ``SET`` would stay on a server connection the
pooler hands to another client next. So each transaction sets them itself, with ``set_config(…,
true)`` (``SET LOCAL``): one statement as it begins, gone at its COMMIT or ROLLBACK. Statements
outside a transaction (autocommit reads) get the server's defaults: set those too with
``ALTER ROLE … SET lock_timeout …`` (docs/operations.md).
"""

import select

from django.conf import settings
from django.db.backends.postgresql import base

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


def carrying_timeouts(connection, sql):
    """``sql``, to be sent as one query, preceded where needed by the statement setting the timeouts.

    Behind a transaction-mode pooler no startup parameter sets the timeouts, and a statement sent
    outside a transaction opens none for ``_set_autocommit`` to set them in: it carries them.
    Sent as one query, the two statements are one implicit transaction (SET LOCAL holds). The
    caller reads the last result (``cursor.nextset()``).
    """
    if connection.settings_dict.get("TIMEOUTS_PER_TRANSACTION") and not connection.in_atomic_block:
        return f"{set_timeouts_sql(connection.settings_dict)}; {sql}"
    return sql


class DatabaseWrapper(base.DatabaseWrapper):
    def close_if_health_check_failed(self):
        """Django's check before a request reuses the connection, without the ``SELECT 1`` when quiet.

        Django sends that statement before each request's first one (CONN_HEALTH_CHECKS): one
        round trip per request, as much as a guarded write's. A connection the server has said
        nothing on since its last statement is as usable as that statement left it (errors are
        checked apart, with the round trip: ``close_if_unusable_or_obsolete``); only one that
        heard something gets the real check, and is closed when it fails it.
        """
        if (
            self.connection is not None
            and self.health_check_enabled
            and not self.health_check_done
            and not self.pool
            and not heard_from_server(self.connection)
        ):
            self.health_check_done = True
            return
        super().close_if_health_check_failed()

    def _set_autocommit(self, autocommit):
        super()._set_autocommit(autocommit)
        if not autocommit and self.settings_dict.get("TIMEOUTS_PER_TRANSACTION"):
            # The transaction's first statement (psycopg sends BEGIN before it). Raw cursor: it is
            # the connection's housekeeping, like BEGIN, not one of the operation's statements.
            with self.connection.cursor() as cursor:
                cursor.execute(set_timeouts_sql(self.settings_dict))


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
