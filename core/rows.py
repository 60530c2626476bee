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
    fields = model._meta.concrete_fields
    return model.from_db(
        db,
        [field.attname for field in fields],
        [_converted(value, field, connection) for value, field in zip(values, fields, strict=True)],
    )


def load_joined(models, row, connection, db):
    """One instance per model from a row holding each model's columns in turn."""
    instances, start = [], 0
    for model in models:
        width = len(model._meta.concrete_fields)
        instances.append(load(model, row[start : start + width], connection, db))
        start += width
    return instances


def _converted(value, field, connection):
    column = field.get_col(field.model._meta.db_table)
    for converter in connection.ops.get_db_converters(column) + column.get_db_converters(connection):
        value = converter(value, column, connection)
    return value
