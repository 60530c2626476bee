"""Model instances from the columns of a hand-written statement, loaded as the ORM would.

For the few statements the ORM cannot express (core.decide's data-modifying CTE) or should
not rebuild on every request (core.api.authentication's member lookup): the SELECT list is
each model's concrete columns in field order, and each value goes through the backend's and
the field's converters before ``Model.from_db``.
"""


def columns(model, alias, quote):
    """``alias.col, …`` for each concrete field of ``model``, in the order ``load`` reads them."""
    return ", ".join(f"{alias}.{quote(field.column)}" for field in model._meta.concrete_fields)


def load(model, values, connection, db):
    """An instance of ``model`` from ``values`` (its concrete fields' columns, in order)."""
    names, converters = _loading(model, connection)
    converted = [
        _converted(value, column, functions, connection)
        for value, (column, functions) in zip(values, converters, strict=True)
    ]
    return model.from_db(db, names, converted)


def load_joined(models, row, connection, db):
    """One instance per model from a row holding each model's columns in turn."""
    instances, start = [], 0
    for model in models:
        width = len(model._meta.concrete_fields)
        instances.append(load(model, row[start : start + width], connection, db))
        start += width
    return instances


def _loading(model, connection):
    """Each field's attname and (column, converters), worked out once per model and database vendor."""
    key = (model, connection.vendor)  # every connection of a vendor names the same converters
    if key not in _LOADED:
        _LOADED[key] = _worked_out(model, connection)
    return _LOADED[key]


_LOADED = {}


def _worked_out(model, connection):
    fields = model._meta.concrete_fields
    converters = []
    for field in fields:
        column = field.get_col(model._meta.db_table)
        converters.append((column, connection.ops.get_db_converters(column) + column.get_db_converters(connection)))
    return [field.attname for field in fields], converters


def _converted(value, column, functions, connection):
    for function in functions:
        value = function(value, column, connection)
    return value
