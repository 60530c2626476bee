"""Strict input: what the OpenAPI schema forbids is refused with 400 and a message per field.

Every request body and query serializer of the API derives from ``StrictInput`` (the schema
generator refuses any other, ``core.api.schema``), so a client learns of a typo'd field or a
number sent where a string is specified instead of having it silently ignored or coerced.
The request schemas say the same: ``additionalProperties: false`` and exact JSON types.
"""

import re
from collections.abc import Mapping

from django.http import QueryDict
from django.utils.translation import gettext_lazy as _
from drf_spectacular.utils import extend_schema_field
from rest_framework import pagination, serializers

from core.money import in_currency, payable_currencies

MAX_ID = 2**63 - 1  # bigint ids
MAX_VERSION = 2**31 - 1

# Money as sent over the API: a decimal string, digits [0-9] only (Python's \d also takes Arabic-Indic
# digits, which the schema's ECMA pattern does not), up to three places (KWD, BHD...), at most 99,999,999
# (eight digits; fractions only below 10,000,000: every currency charged in fractions has its ceiling
# below that, core.money.max_amount). The currency's own minor unit and ceiling are judged by its app
# (amount_precision, invalid_amount).
POSITIVE_AMOUNT_PATTERN = (
    r"^(?:[1-9][0-9]{0,6}(?:\.[0-9]{1,3})?|[1-9][0-9]{7}(?:\.0{1,3})?|0\.(?:[1-9][0-9]{0,2}|0[1-9][0-9]?|00[1-9]))$"
)
PRICE_PATTERN = r"^(?:0|[1-9][0-9]{0,9})(?:\.[0-9]{1,3})?$"
# An Idempotency-Key: 1-255 printable ASCII characters, no space at either end (HTTP strips it).
IDEMPOTENCY_KEY_PATTERN = r"^[!-~](?:[ -~]{0,253}[!-~])?$"

# An integer in a query string: ASCII digits, as the schema's "integer" reads. DRF's IntegerField (and
# int()) also take " 3", "3.0" and Arabic-Indic digits ("٣"): a client's mistake read as a number.
INTEGER_TEXT = re.compile(r"-?[0-9]+")

UNKNOWN_FIELD = _("Unknown field.")
GIVEN_TWICE = _("Give this parameter once.")
WRONG_TYPE = {
    "string": _("Must be a string."),
    "integer": _("Must be an integer."),
    "boolean": _("Must be true or false."),
    "object": _("Must be an object."),
}


def json_type(field):
    """The JSON type a field's value must have on input (None: not checked here)."""
    declared = getattr(field, "json_type", None)
    if declared:
        return declared
    if isinstance(field, serializers.BooleanField):
        return "boolean"
    if isinstance(field, serializers.IntegerField):
        return "integer"
    if isinstance(field, serializers.Serializer):
        return "object"
    string_fields = (
        serializers.CharField,
        serializers.ChoiceField,
        serializers.DateField,
        serializers.DateTimeField,
        serializers.DecimalField,
        serializers.UUIDField,
    )
    if isinstance(field, string_fields):
        return "string"
    return None


def _has_type(value, expected):
    if expected == "string":
        return isinstance(value, str)
    if expected == "integer":
        return not isinstance(value, bool) and (
            isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        )
    if expected == "boolean":
        return isinstance(value, bool)
    if expected == "object":
        return isinstance(value, Mapping)
    return True


class OnlyVersionRequired:
    """A PATCH body's serializer (mixed in before it): every field optional but ``version``, the one
    the client read, so an edit is always judged against what it was built on. The PATCH schema
    marks it required too (core.api.schema)."""

    required_in_patch = ("version",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name, field in self.fields.items():
            if name != "version":
                field.required = False


class StrictInput(serializers.Serializer):
    """A request body or query: unknown fields and wrongly typed values are 400 per field.

    Query strings are all text, so only their values are checked (by the fields themselves);
    unknown query parameters are let through, as HTTP caches and tracing tools add their own.
    An empty query value (``?status=``) is a value like any other, not an omission as in
    DRF's HTML-form reading, so it is refused where the schema says so.
    """

    def to_internal_value(self, data):
        if isinstance(data, QueryDict):
            repeated = [name for name in data if len(data.getlist(name)) > 1 and name in self.fields]
            if repeated:
                raise serializers.ValidationError({name: [GIVEN_TWICE] for name in repeated})
            data = {name: data[name] for name in data}
            integers = [name for name in data if name in self.fields and json_type(self.fields[name]) == "integer"]
            not_integers = [name for name in integers if not INTEGER_TEXT.fullmatch(data[name])]
            if not_integers:
                raise serializers.ValidationError({name: [WRONG_TYPE["integer"]] for name in not_integers})
        elif isinstance(data, Mapping):
            errors = {}
            writable = {name for name, field in self.fields.items() if not field.read_only}
            for name in data:
                if name not in writable:
                    errors[str(name)] = [UNKNOWN_FIELD]
            for name, field in self.fields.items():
                if name not in data or name in errors or field.read_only:
                    continue
                value, expected = data[name], json_type(field)
                if value is None and field.allow_null:
                    continue
                if expected and not _has_type(value, expected):
                    errors[name] = [WRONG_TYPE[expected]]
            if errors:
                raise serializers.ValidationError(errors)
        return super().to_internal_value(data)


class DeleteQueryInputSerializer(StrictInput):
    """A DELETE's query: the ``version`` the client read (optional); a row changed since is refused
    ``version_conflict`` (409), never deleted as it now stands."""

    version = serializers.IntegerField(
        min_value=1,
        max_value=MAX_VERSION,
        required=False,
        help_text="The version you read; a row changed since is not deleted (409 version_conflict).",
    )


class PatternField(serializers.CharField):
    """A string that must match ``pattern`` exactly (the schema carries the same pattern)."""

    def __init__(self, pattern, message, **kwargs):
        self.pattern = self.request_pattern = pattern
        self.message = message
        super().__init__(trim_whitespace=False, **kwargs)

    def to_internal_value(self, data):
        text = super().to_internal_value(data)
        if not re.fullmatch(self.pattern, text):
            raise serializers.ValidationError(self.message, code="invalid")
        return text


@extend_schema_field({"type": "string", "enum": payable_currencies(), "example": "USD"})
class CurrencyField(serializers.CharField):
    """An ISO 4217 code a customer can pay in; the manager refuses any other (400 ``unknown_currency``)."""

    def __init__(self, **kwargs):
        super().__init__(max_length=3, trim_whitespace=False, **kwargs)


class StrictDateField(serializers.DateField):
    """An RFC 3339 full-date ("2026-02-28") and nothing else Python would parse ("20260228", "2026-W09")."""

    def to_internal_value(self, value):
        if not isinstance(value, str) or not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", value):
            self.fail("invalid", format="YYYY-MM-DD")
        return super().to_internal_value(value)


class StrictDateTimeField(serializers.DateTimeField):
    """An RFC 3339 date-time with its offset ("2026-02-28T09:00:00Z"): never a guess at the zone."""

    PATTERN = r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?(?:[Zz]|[+-][0-9]{2}:[0-9]{2})"

    def to_internal_value(self, value):
        if not isinstance(value, str) or not re.fullmatch(self.PATTERN, value):
            self.fail("invalid", format="YYYY-MM-DDThh:mm:ssZ")
        return super().to_internal_value(value)


class StrictLimitOffsetPagination(pagination.LimitOffsetPagination):
    """``?limit=&offset=``: a bad value is a 400 naming the parameter, not silently the default."""

    max_limit = 500

    def get_limit(self, request):
        if self.limit_query_param not in request.query_params:
            return self.default_limit
        return self._integer(request, self.limit_query_param, minimum=1, maximum=self.max_limit)

    def get_offset(self, request):
        if self.offset_query_param not in request.query_params:
            return 0
        return self._integer(request, self.offset_query_param, minimum=0, maximum=MAX_ID)

    @staticmethod
    def _integer(request, name, *, minimum, maximum):
        if len(request.query_params.getlist(name)) > 1:
            raise serializers.ValidationError({name: [GIVEN_TWICE]})
        if not INTEGER_TEXT.fullmatch(request.query_params[name]):
            raise serializers.ValidationError({name: [WRONG_TYPE["integer"]]})
        field = serializers.IntegerField(min_value=minimum, max_value=maximum)
        try:
            return field.run_validation(request.query_params[name])
        except serializers.ValidationError as error:
            raise serializers.ValidationError({name: error.detail})

    def get_schema_operation_parameters(self, view):
        parameters = super().get_schema_operation_parameters(view)
        bounds = {
            self.limit_query_param: {"minimum": 1, "maximum": self.max_limit, "default": self.default_limit},
            self.offset_query_param: {"minimum": 0, "maximum": MAX_ID, "default": 0},
        }
        for parameter in parameters:
            parameter["schema"].update(bounds.get(parameter["name"], {}))
        return parameters


@extend_schema_field(
    {"type": "string", "format": "decimal", "pattern": r"^[0-9]+(\.[0-9]{1,4})?$", "example": "12.50", "readOnly": True}
)
class InCurrencyField(serializers.Field):
    """An amount of the answered object (or dict), written with its ``currency``'s places: "450.00" USD,
    "1500" JPY, "1.250" KWD, up to 4 (CLF); null stays null (core.money.in_currency)."""

    def __init__(self, amount_attr, **kwargs):
        self.amount_attr = amount_attr
        super().__init__(source="*", read_only=True, **kwargs)

    def to_representation(self, obj):
        return in_currency(_read(obj, self.amount_attr), _read(obj, "currency"))


def _read(source, name):
    return source.get(name) if isinstance(source, Mapping) else getattr(source, name)
