"""The edit of a guarded row's editable fields: only the fields named, only at the version the caller read;
and its deletion, only at that version.

Shared by the managers' ``edit_*`` operations (a package's terms, a booking's or a proposal's
contact) and ``delete_*`` ones (a member); each calls these inside its own ``@guarded`` transaction.
"""

from core.exceptions import VersionConflict


def refuse_unknown_fields(fields, editable, *, model, edit):
    """Raise ValueError for a field not in ``editable``: a programming error (guarded columns are not edited so)."""
    unknown = sorted(set(fields) - set(editable))
    if unknown:
        raise ValueError(f"{model} fields {unknown} cannot be written by {edit}")


def edit_at_version(scope, *, version, changes, missing):
    """Lock the row of ``scope`` FOR NO KEY UPDATE, refuse a stale ``version``, then write only ``changes``.

    Raises ``missing`` when there is no such row, VersionConflict when ``version`` is not the
    row's (its BumpVersion trigger moved it since the caller read it). Returns the row as written.
    """
    current = scope.select_for_update(no_key=True).values_list("version", flat=True).first()
    if current is None:
        raise missing()
    if version != current:
        raise VersionConflict(current=current)
    if changes:
        scope.update(**changes)
    return scope.get()


def delete_at_version(scope, *, version, missing):
    """Lock the row of ``scope`` FOR UPDATE, refuse a stale ``version``, then delete it.

    Raises ``missing`` when there is no such row, VersionConflict when ``version`` is not the
    row's: a page that showed the row before a colleague changed it does not delete it as it now is.
    """
    current = scope.select_for_update().values_list("version", flat=True).first()
    if current is None:
        raise missing()
    if version != current:
        raise VersionConflict(current=current)
    scope.delete()
