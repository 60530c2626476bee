"""One statement that decides a filtered-update guard and, on a refusal, shows why.

A filtered ``UPDATE … WHERE <conditions>`` decides a race in one statement, but its
row count says only *that* it lost, so naming the refusal took a second read. Here the
row is locked, judged and changed in one data-modifying CTE:

    WITH locked AS (SELECT lockstep_row.*, <when> AS lockstep_won, clock_timestamp() AS lockstep_now
                    FROM (SELECT <row> FROM t WHERE <key> FOR NO KEY UPDATE OF t) AS lockstep_row),
         changed AS (UPDATE t SET … FROM locked WHERE t.pk = locked.pk AND locked.lockstep_won
                     RETURNING <row>)
    SELECT true, <row> FROM changed UNION ALL SELECT false, <row> FROM locked WHERE NOT lockstep_won

``FOR NO KEY UPDATE`` waits for a concurrent writer (bounded by lock_timeout) and then
reads the row as that writer committed it. ``when`` and the clock are evaluated *above*
the lock, on the row it returns, once the lock is held: had they been in the locking
SELECT itself, PostgreSQL would have computed them before the wait and recomputed them
only for a row the other transaction had changed, so a holder that only locked the row
would have left the verdict (an expiry by ``clock_timestamp()``) and the stamped clock
from before the wait. A loser gets the winner's row back, which names its refusal without
another read. The UPDATE then changes the row this statement already holds. In autocommit
the statement is its own transaction: no BEGIN, no COMMIT.
"""

from django.core.exceptions import FullResultSet
from django.db import connections
from django.db.models import BooleanField, ExpressionWrapper
from django.db.models.sql import Query

from core import rows
from core.db_backend.base import execute_carrying_timeouts
from core.prepared import Prepared

# changes={"used_at": NOW}: the database clock read by the lock (the moment the guard judged the row).
NOW = object()


def decide(queryset, *, when, changes):
    """Lock the row ``queryset`` selects; apply ``changes`` if ``when`` holds on its current version.

    Return ``(True, row)`` with the changed row, ``(False, row)`` with the row as it
    stands (locked until the transaction ends), or ``(False, None)`` when nothing matched.
    ``row.judged_at`` is the database clock at the moment the row was judged.
    ``changes`` maps field names to values or ``NOW``. One statement.
    """
    statement, params = decide_statement(queryset, when=when, changes=changes)
    return _run(queryset.model, queryset.db, statement, params)


class Decision(Prepared):
    """``decide`` for one call site, its statement built and compiled once per process (core.prepared).

    ``arguments(manager, **keywords)`` returns decide's keyword arguments (a manager's
    ``consumption``, say); ``kinds`` as ``Prepared``'s. Calling it decides.
    """

    def __init__(self, arguments, **kinds):
        self.arguments = arguments
        super().__init__(lambda manager, **keywords: decide_statement(**arguments(manager, **keywords)), **kinds)

    def __call__(self, manager, **keywords):
        return _run(manager.model, manager.db, *self.statement(manager, **keywords))


def verdict_sql(queryset, when, **annotations):
    """``queryset``'s SELECT with ``when`` judged on each row as ``lockstep_won``: SQL and parameters.

    The first part of a statement that decides and writes in one round trip (``decide``, and
    ``PromoCodeManager.redemption``, which inserts rather than updates).
    """
    judged = queryset.annotate(**annotations, lockstep_won=ExpressionWrapper(when, output_field=BooleanField()))
    return judged.order_by().query.get_compiler(queryset.db).as_sql()


def condition_sql(model, condition, connection):
    """``condition`` (a Q on ``model``'s own fields) as SQL naming its columns unqualified, as Django
    compiles a CheckConstraint's: it judges whatever row source the statement puts in front of it."""
    query = Query(model, alias_cols=False)
    where = query.build_where(condition)
    try:
        return where.as_sql(query.get_compiler(connection=connection), connection)
    except FullResultSet:  # an empty Q: every row passes
        return "true", []


def _run(model, db, statement, params):
    connection = connections[db]
    with connection.cursor() as cursor:
        execute_carrying_timeouts(cursor, statement, params)
        found = cursor.fetchone()
    if found is None:
        return False, None
    won, *values, judged_at = found
    row = rows.load(model, values, connection, db)
    row.judged_at = judged_at  # the database clock when the row was judged (after any lock wait)
    return won, row


def decide_statement(queryset, *, when, changes):
    """The SQL and parameters of ``decide`` (bench/ sends the same statement through pgbench)."""
    model, db = queryset.model, queryset.db
    connection = connections[db]
    quote = connection.ops.quote_name
    table, pk = quote(model._meta.db_table), quote(model._meta.pk.column)
    # Compiled without select_for_update (Django refuses that outside atomic(); this statement
    # needs no transaction of its own), the lock clause added here. The row's own columns only:
    # ``when`` and the clock are judged on it above the lock (see the module's docstring).
    row_sql, row_params = queryset.order_by().query.get_compiler(db).as_sql()
    when_sql, when_params = condition_sql(model, when, connection)
    locked_sql = (
        f"SELECT lockstep_row.*, ({when_sql}) AS lockstep_won, clock_timestamp() AS lockstep_now "  # noqa: S608
        f"FROM ({row_sql} FOR NO KEY UPDATE OF {table}) AS lockstep_row"
    )
    locked_params = [*when_params, *row_params]  # in the order they appear
    assignments, set_params = [], []
    for name, value in changes.items():
        field = model._meta.get_field(name)
        if value is NOW:
            assignments.append(f"{quote(field.column)} = locked.lockstep_now")
        else:
            assignments.append(f"{quote(field.column)} = %s")
            set_params.append(field.get_db_prep_save(value, connection))

    def columns(source):
        return rows.columns(model, source, quote)

    returning = columns(table)
    # Names and columns come from the model's own meta; every value is a parameter.
    statement = (
        f"WITH locked AS ({locked_sql}), "  # noqa: S608 - identifiers from model meta, values parameterised
        f"changed AS (UPDATE {table} SET {', '.join(assignments)} FROM locked "
        f"WHERE {table}.{pk} = locked.{pk} AND locked.lockstep_won RETURNING {returning}) "
        f"SELECT true AS lockstep_won, {columns('changed')}, locked.lockstep_now "
        f"FROM changed JOIN locked ON changed.{pk} = locked.{pk} "
        f"UNION ALL SELECT false, {columns('locked')}, locked.lockstep_now FROM locked WHERE NOT locked.lockstep_won"
    )
    return statement, [*locked_params, *set_params]
