"""Statements built and compiled once per process, then sent with each call's values.

The ORM builds and compiles a query on every call; on a guarded request that was a fifth of
the app server's CPU, and inside a row lock it is time the lock is held for nothing. A
``Prepared`` statement is compiled the first time, twice, with stand-in values; where the
two compilations differ is where each value goes, and the rest are constants. Later calls
send the same SQL with their own values in those places.

``build(manager, **keywords)`` returns ``(sql, params)``. ``kinds`` names the keywords whose
values vary from call to call, with their types (``uuid.UUID``, ``int``, ``Decimal``, ``str``,
``datetime.date``, ``datetime.datetime``, ``dict`` for a JSON field's value; a model instance for ``int``
is its pk); any other
keyword shapes the statement (each value has its own), and so does a kind given ``None``.
A value must reach the parameters as it was given (a JSON value in the adapter the ORM wraps it in, the
same for every call): if a stand-in comes out otherwise transformed, or
the compilations differ otherwise, the statement is not prepared and every call builds it
(tests check each one is prepared). A value not of its kind is left to the ORM, which
refuses it as it always did.
"""

import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from django.db import connections
from psycopg.types.json import Json, Jsonb

from core import rows

STAND_IN_BASE = 7_919_000_000


class Prepared:
    def __init__(self, build, **kinds):
        self.build, self.kinds = build, kinds
        self._prepared = {}  # (db, shape) -> (sql, template), or None: see _prepare

    def statement(self, manager, **keywords):
        """SQL and parameters for these keywords: the prepared SQL with their values (or built afresh)."""
        shape, kinds = self._split(keywords)
        try:
            values = {name: _coerce(keywords[name], kind) for name, kind in kinds.items()}
        except (TypeError, ValueError, ArithmeticError):  # not of its kind: the ORM refuses it as it would
            return self.build(manager, **keywords)
        key = (manager.db, tuple(sorted(shape.items(), key=lambda item: item[0])))
        if key not in self._prepared:
            self._prepared[key] = self._prepare(manager, shape, kinds)
        if self._prepared[key] is None:
            return self.build(manager, **keywords)
        sql, template = self._prepared[key]
        return sql, _filled(template, values)

    def execute(self, manager, **keywords):
        """Send the statement (an UPDATE or DELETE, say); return the number of rows it changed."""
        with connections[manager.db].cursor() as cursor:
            cursor.execute(*self.statement(manager, **keywords))
            return cursor.rowcount

    def fetch_one(self, manager, **keywords):
        """Send the statement; return its first row (None when it returned none).

        A statement preceded by others in the same query (``core.db.after_local_lock_timeout``)
        answers with its own row: the last result is read.
        """
        with connections[manager.db].cursor() as cursor:
            cursor.execute(*self.statement(manager, **keywords))
            while cursor.nextset():
                pass
            return cursor.fetchone()

    def create(self, manager, **values):
        """``manager.create(**values)`` through a statement built by ``insert_statement``: the saved instance."""
        return saved(manager, values, self.fetch_one(manager, **values))

    def instance(self, manager, **keywords):
        """The row the statement selects as an instance of the manager's model (core.rows), or None.

        For statements that select the model's concrete columns in field order (a plain queryset's SELECT).
        """
        row = self.fetch_one(manager, **keywords)
        return None if row is None else rows.load(manager.model, row, connections[manager.db], manager.db)

    def prepared(self, manager, **keywords):
        """What ``statement`` sends for these keywords if it can be prepared, else None (for tests)."""
        shape, kinds = self._split(keywords)
        prepared = self._prepare(manager, shape, kinds)
        if prepared is None:
            return None
        values = {name: _coerce(keywords[name], kind) for name, kind in kinds.items()}
        sql, template = prepared
        return sql, _filled(template, values)

    def _split(self, keywords):
        """The keywords that shape the statement (a kind given None among them), and the kinds that vary."""
        kinds = {name: kind for name, kind in self.kinds.items() if keywords[name] is not None}
        return {name: value for name, value in keywords.items() if name not in kinds}, kinds

    def _prepare(self, manager, shape, kinds):
        first, second = (
            {name: _stand_in(kind, 2 * n + i) for n, (name, kind) in enumerate(kinds.items())} for i in (0, 1)
        )
        sql, params = self.build(manager, **shape, **first)
        sql_again, params_again = self.build(manager, **shape, **second)
        if sql != sql_again or len(params) != len(params_again):
            return None
        template = []  # per parameter: (None, constant), (name, None) or (name, the JSON adapter's class and dumps)
        for one, other in zip(params, params_again, strict=True):
            wrapper = (type(one), one.dumps) if isinstance(one, Json | Jsonb) and type(one) is type(other) else None
            if wrapper is not None:
                one, other = one.obj, other.obj
            elif one == other:
                template.append((None, one))
                continue
            names = [name for name in kinds if first[name] == one and second[name] == other]
            if len(names) != 1:
                return None
            template.append((names[0], wrapper))
        return sql, template


def insert_statement(manager, **values):
    """The INSERT ``manager.create(**values)`` sends (``Model.save``'s fields and RETURNING): a ``build``.

    For a model with no ``save()`` logic of its own on insert and no signal receivers.
    """
    from django.db.models import sql

    instance, meta = manager.model(**values), manager.model._meta
    fields = [field for field in meta.local_concrete_fields if not field.generated]
    if instance.pk is None:
        fields = [field for field in fields if field is not meta.auto_field]
    query = sql.InsertQuery(manager.model)
    query.insert_values(fields, [instance])
    compiler = query.get_compiler(using=manager.db)
    compiler.returning_fields = meta.db_returning_fields
    ((statement, params),) = compiler.as_sql()
    return statement, params


def in_one_statement(writes, last):
    """``WITH <name> AS (<write>), … <last>``: writes and the statement after them sent as one.

    ``writes`` are ``(name, (sql, params))``; ``last`` may read what each returns (``SELECT … FROM
    <name>``), and so may a later write. PostgreSQL runs every write once and to completion, whether
    or not anything reads it; constraints and AFTER triggers act at the end of the statement, when
    every write is done. One round trip where each write took one.
    """
    sql = ", ".join(f"{name} AS ({write_sql})" for name, (write_sql, _params) in writes)
    params = [param for _name, (_sql, write_params) in writes for param in write_params]
    return f"WITH {sql} {last[0]}", [*params, *last[1]]


def insert_with(manager, values, child_manager, child_values, *, link, then=None):
    """One statement inserting a row and a row pointing at it (``link``, the child's foreign key): a ``build``.

    ``WITH <parent> AS (INSERT … RETURNING …), <child> AS (INSERT … VALUES ((SELECT <pk> FROM <parent>),
    …) RETURNING …) SELECT * FROM <parent>, <child>``: its row is what each INSERT returns
    (``db_returning_fields``), the parent's first (``saved``).

    ``then(parent_pk)``: a third write of the same statement, (SQL, parameters) of a data-modifying
    statement with RETURNING that may use ``parent_pk`` (the SQL of the new parent's pk). What it
    returns follows on the row, NULLs when it changed nothing.
    """
    parent, child = manager.model._meta, child_manager.model._meta
    quote = connections[manager.db].ops.quote_name
    parent_name, child_name = quote(parent.model_name), quote(child.model_name)
    parent_pk = returned_by(parent_name, parent.pk.column, quote)
    child_values = {**child_values, child.get_field(link).attname: parent_pk}
    writes = [
        (parent_name, insert_statement(manager, **values)),
        (child_name, insert_statement(child_manager, **child_values)),
    ]
    last = f"SELECT * FROM {parent_name}, {child_name}"  # noqa: S608 - identifiers
    if then is not None:
        writes.append(("lockstep_then", then(parent_pk)))
        last += " LEFT JOIN lockstep_then ON true"
    return in_one_statement(writes, (last, []))


def returned_by(name, column, quote):
    """``(SELECT <column> FROM <name>)``: a value a write of ``in_one_statement`` returned, for a later one."""
    from django.db.models.expressions import RawSQL

    return RawSQL(f"SELECT {quote(column)} FROM {name}", [])  # noqa: S608 - identifiers


def saved(manager, values, returned):
    """``manager.model(**values)`` as the INSERT that returned ``returned`` (its ``db_returning_fields``) saved it."""
    instance = manager.model(**values)
    for field, value in zip(manager.model._meta.db_returning_fields, returned, strict=True):
        setattr(instance, field.attname, value)
    instance._state.adding, instance._state.db = False, manager.db
    return instance


def update_statement(queryset, **changes):
    """The SQL and parameters ``queryset.update(**changes)`` sends: a ``build`` for a statement ``execute`` runs."""
    from django.db.models import sql

    query = queryset.query.chain(sql.UpdateQuery)
    query.add_update_values(changes)
    query.annotations = {}
    return query.get_compiler(queryset.db).as_sql()


def _filled(template, values):
    """The parameters of a prepared statement: its constants, and these values where they go."""
    return [
        constant_or_wrapper
        if name is None
        else values[name]
        if constant_or_wrapper is None
        else constant_or_wrapper[0](values[name], dumps=constant_or_wrapper[1])
        for name, constant_or_wrapper in template
    ]


def _coerce(value, kind):
    if kind is int and hasattr(value, "pk"):
        return value.pk
    if kind is date and isinstance(value, datetime):  # a datetime is a date to isinstance, not to a DateField
        raise TypeError("a datetime is not a date")
    if kind is dict and not isinstance(value, dict):
        raise TypeError("not a JSON object")
    if kind in (date, datetime) and not isinstance(value, kind):
        raise TypeError(f"not a {kind.__name__}")  # the ORM parses strings: leave them to it
    return value if isinstance(value, kind) else kind(value)


def _stand_in(kind, index):
    """A value of ``kind`` that no real call passes, a different one for each ``index``."""
    number = STAND_IN_BASE + index
    if kind is int:
        return -number  # no primary key or count is negative
    if kind is Decimal:
        return Decimal(-number) / 1000
    if kind is uuid.UUID:
        return uuid.UUID(int=number)
    if kind is str:
        return f"lockstep-stand-in-{number}"
    if kind is datetime:
        return datetime(1001, 1, 1, tzinfo=UTC) + timedelta(seconds=index)
    if kind is date:
        return date(1001, 1, 1) + timedelta(days=index)
    if kind is dict:
        return {"lockstep-stand-in": number}
    raise TypeError(f"no stand-in for {kind!r}")
