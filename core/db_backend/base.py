"""Django's PostgreSQL backend, with Lockstep's timeouts in effect inside every transaction.

Directly connected, the timeouts are startup parameters of each connection (config/settings.py).
Behind a transaction-mode pooler (PgBouncer: ``DATABASE_POOL_MODE=transaction``) startup
parameters never reach the server, and a session ``SET`` would stay on a server connection the
pooler hands to another client next. So each transaction sets them itself, with ``set_config(…,
true)`` (``SET LOCAL``): one statement as it begins, gone at its COMMIT or ROLLBACK. Statements
outside a transaction (autocommit reads) get the server's defaults: set those too with
``ALTER ROLE … SET lock_timeout …`` (docs/operations.md).
"""

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
    def _set_autocommit(self, autocommit):
        super()._set_autocommit(autocommit)
        if not autocommit and self.settings_dict.get("TIMEOUTS_PER_TRANSACTION"):
            # The transaction's first statement (psycopg sends BEGIN before it). Raw cursor: it is
            # the connection's housekeeping, like BEGIN, not one of the operation's statements.
            with self.connection.cursor() as cursor:
                cursor.execute(set_timeouts_sql(self.settings_dict))
