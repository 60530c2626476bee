"""From an id in the URL to one row of this tenant, or the domain's not-found error.

Every API view that names a row by id goes through here, so every app answers the same
way: a malformed id, an id outside bigint, another tenant's row and a row that does not
exist are all the one ``not_found`` error the view names (``promo_not_found``,
``session_not_found``, ...), never a 400 or a 500, and never a hint that the id exists
elsewhere.

- ``get_for_tenant(Model or queryset, tenant, NotFoundError, pk=raw)`` fetches the row;
- ``valid_id(raw, NotFoundError)`` / ``valid_uuid(raw, NotFoundError)`` only check the id,
  for a view that hands it to a manager method (which scopes by tenant itself).
"""

import re
import uuid

from django.core.exceptions import FieldDoesNotExist
from django.db import models

from core.api.inputs import MAX_ID
from core.managers import TenantScopedQuerySet

_DIGITS = re.compile(r"[0-9]+")


def valid_id(raw, not_found):
    """Return ``raw`` as a bigint id (1 to 2**63-1), or raise ``not_found()``.

    ``raw`` is an int (a URL's ``<int:pk>``) or a string of ASCII digits (a ``<str:pk>``);
    anything else - a sign, a space, a decimal point, other scripts' digits - is malformed.
    """
    if isinstance(raw, str):
        if not _DIGITS.fullmatch(raw):
            raise not_found()
        try:
            raw = int(raw)
        except ValueError:  # more digits than Python converts: far out of range anyway
            raise not_found()
    elif isinstance(raw, bool) or not isinstance(raw, int):
        raise not_found()
    if not 1 <= raw <= MAX_ID:
        raise not_found()
    return raw


def valid_uuid(raw, not_found):
    """Return ``raw`` as a UUID (in any form ``uuid.UUID`` reads), or raise ``not_found()``."""
    if isinstance(raw, uuid.UUID):
        return raw
    try:
        return uuid.UUID(str(raw))
    except ValueError:
        raise not_found()


def get_for_tenant(queryset_or_model, tenant, not_found, **lookup):
    """Return the one row of ``tenant`` that ``lookup`` names, or raise ``not_found()``.

    ``queryset_or_model`` is a model, or a queryset of it carrying what the view needs
    (``select_related``, annotations); its queryset must derive from TenantScopedQuerySet.
    Each lookup value on an id - an integer primary key, a foreign key to one - is checked
    with ``valid_id``, and on a UUID field with ``valid_uuid``, before any query; other
    lookups pass as they are. One query.
    """
    if not lookup:
        raise TypeError("get_for_tenant() needs a lookup, e.g. pk=...")
    if isinstance(queryset_or_model, models.QuerySet):
        queryset = queryset_or_model
    else:
        queryset = queryset_or_model._default_manager.all()
    if not isinstance(queryset, TenantScopedQuerySet):
        raise TypeError(f"{queryset.model.__name__}'s queryset does not derive from TenantScopedQuerySet")
    checked = {name: _checked(queryset.model, name, value, not_found) for name, value in lookup.items()}
    try:
        return queryset.for_tenant(tenant).get(**checked)
    except queryset.model.DoesNotExist:
        raise not_found()


def _checked(model, name, value, not_found):
    """``value`` validated for the field ``name`` names on ``model`` (unchanged where it is no id)."""
    if name == "pk":
        field = model._meta.pk
    else:
        try:
            field = model._meta.get_field(name)  # a field's name or attname (``package_id``)
        except FieldDoesNotExist:
            return value  # a lookup path (``code__iexact``): the ORM judges it
    if isinstance(field, models.ForeignKey):
        if isinstance(value, models.Model):
            return value
        field = field.target_field
    if isinstance(field, models.UUIDField):
        return valid_uuid(value, not_found)
    if field.primary_key and isinstance(field, models.IntegerField):
        return valid_id(value, not_found)
    return value
