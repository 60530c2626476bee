"""The OpenAPI schema says what the server really does: one place for what every operation shares.

- ``LockstepAutoSchema`` (``DEFAULT_SCHEMA_CLASS``): ``Idempotency-Key`` is declared exactly where
  the handler honours it (``@idempotent`` marks it); public operations declare no security and
  members-only ones require a credential; request bodies come from ``StrictInput`` serializers
  only, and say so (``additionalProperties: false``).
- ``finish_schema`` (a postprocessing hook): every error answer is the typed envelope, with
  ``Retry-After`` where it comes; path ids have one type everywhere; the create→act flows are
  OpenAPI links, so generated clients and stateful fuzzers can follow them.
"""

from django.core.exceptions import ImproperlyConfigured
from django.core.validators import RegexValidator
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.plumbing import is_patched_serializer
from drf_spectacular.utils import OpenApiParameter
from rest_framework import serializers

from core.api.inputs import IDEMPOTENCY_KEY_PATTERN, MAX_ID, StrictInput

ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "string", "description": "Stable, machine-readable error code (docs/api.md)."},
                "message": {"type": "string", "description": "Human-readable message in the request's language."},
                "fields": {
                    "type": "object",
                    "additionalProperties": True,
                    "description": "Per-field messages of an `invalid_input` error.",
                },
                "details": {
                    "type": "object",
                    "additionalProperties": True,
                    "description": "The error's parameters (e.g. `current` for version_conflict).",
                },
            },
            "required": ["code", "message"],
        }
    },
    "required": ["error"],
}

ERROR_RESPONSES = {
    "400": "Invalid input (`invalid_input` with `fields`, or a named rule such as `date_in_past`).",
    "401": "Missing or bad credentials.",
    "403": "Not allowed.",
    "404": "Not found, or not yours.",
    "405": "Method not allowed.",
    "409": "Refused by the current state or a lock (`resource_locked` comes with Retry-After).",
    "415": "Unsupported media type.",
    "422": "Idempotency-Key reused with a different request.",
    "429": "Too many requests; retry after Retry-After seconds.",
    "503": "The database or the payment provider is unavailable or timed out; retry.",
}
RETRY_AFTER = {
    "Retry-After": {
        "schema": {"type": "integer", "minimum": 0},
        "description": "Seconds to wait before retrying (sent with resource_locked, throttled and 503).",
    }
}
PUBLIC_ERRORS = {"401", "403"}  # a public operation never asks for credentials

IDEMPOTENCY_KEY = OpenApiParameter(
    "Idempotency-Key",
    {"type": "string", "minLength": 1, "maxLength": 255, "pattern": IDEMPOTENCY_KEY_PATTERN},
    OpenApiParameter.HEADER,
    required=False,
    description="Replays the first answer for the same key and body (`Idempotent-Replayed: true`); "
    "the same key with another body is 422 idempotency_key_reused. Keys live 24 hours.",
)

PATH_PARAMETERS = {
    "id": {"type": "integer", "format": "int64", "minimum": 1, "maximum": MAX_ID},
    "session_id": {"type": "string", "format": "uuid"},
}


def honours_idempotency_key(handler):
    return getattr(handler, "honours_idempotency_key", False)


def is_public(view):
    return not view.get_authenticators()


class LockstepAutoSchema(AutoSchema):
    def get_override_parameters(self):
        parameters = list(super().get_override_parameters())
        if honours_idempotency_key(getattr(self.view, self.method.lower(), None)):
            parameters.append(IDEMPOTENCY_KEY)
        return parameters

    def get_auth(self):
        if is_public(self.view):
            return []
        return [requirement for requirement in super().get_auth() if requirement]  # {} would mean "optional"

    def _get_request_body(self, direction="request"):
        serializer = self.get_request_serializer() if self.method in {"POST", "PUT", "PATCH"} else None
        if serializer is not None and not isinstance(serializer, dict):
            serializer_class = serializer if isinstance(serializer, type) else type(serializer)
            if not issubclass(serializer_class, StrictInput):
                raise ImproperlyConfigured(
                    f"{self.method} {self.path}: request serializer {serializer_class.__name__} must derive "
                    "from core.api.inputs.StrictInput"
                )
        return super()._get_request_body(direction)

    def _map_serializer_field(self, field, direction, bypass_extensions=False):
        schema = super()._map_serializer_field(field, direction, bypass_extensions)
        if direction != "request" or schema is None or "$ref" in schema:
            return schema
        schema = dict(schema)  # may be the field class's shared schema
        if getattr(field, "request_pattern", None):
            schema["pattern"] = field.request_pattern
        elif (
            isinstance(field, serializers.CharField)
            and "pattern" not in schema
            and not any(isinstance(validator, RegexValidator) for validator in field.validators)
        ):
            schema["pattern"] = text_pattern(field)
        return schema

    def _map_basic_serializer(self, serializer, direction):
        schema = super()._map_basic_serializer(serializer, direction)
        if not _own_docstring(serializer):
            schema.pop("description", None)  # not StrictInput's docstring on every component
        if direction == "response" and schema.get("properties"):
            # A serializer renders every field on every answer (null where nullable), so a generated
            # client must not type any of them as possibly missing.
            schema["required"] = list(schema["properties"])
        if direction == "request" and _is_strict(serializer):
            schema["additionalProperties"] = False
            # A PATCH body whose handler needs some fields even then (profiles: version).
            still_required = [
                name for name in getattr(serializer, "required_in_patch", ()) if name in schema["properties"]
            ]
            if is_patched_serializer(serializer, direction) and still_required:
                schema["required"] = still_required
        return schema


def text_pattern(field):
    """What DRF's CharField accepts: no NUL; unless blank is allowed, something besides whitespace
    (it trims first; Python's whitespace adds \\x1c-\\x1f and \\x85 to ECMA's \\s)."""
    if field.allow_blank or not field.trim_whitespace:
        return r"^[^\x00]*$" if field.allow_blank else r"^[^\x00]+$"
    return r"^[^\x00]*[^\s\x00\x1c-\x1f\x85][^\x00]*$"


def _own_docstring(serializer):
    serializer_class = serializer if isinstance(serializer, type) else type(serializer)
    return "__doc__" in vars(serializer_class) and serializer_class.__doc__


def _is_strict(serializer):
    return issubclass(serializer if isinstance(serializer, type) else type(serializer), StrictInput)


# --- the hook ------------------------------------------------------------------------------


def finish_schema(result, generator, request, public):
    """drf-spectacular POSTPROCESSING_HOOK: typed errors, typed path ids, links."""
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    operations = {}
    for methods in result.get("paths", {}).values():
        for method, operation in methods.items():
            if method not in {"get", "post", "put", "patch", "delete"}:
                continue
            operations[operation["operationId"]] = operation
            _type_path_parameters(operation)
            _add_error_responses(operation)
    for source, status, target, parameters, body in LINKS:
        link = {"operationId": target, "parameters": parameters}
        if body is not None:
            link["requestBody"] = body
        operations[source]["responses"][status].setdefault("links", {})[target] = link
    return result


def _type_path_parameters(operation):
    for parameter in operation.get("parameters", []):
        if parameter["in"] == "path" and parameter["name"] in PATH_PARAMETERS:
            parameter["schema"] = dict(PATH_PARAMETERS[parameter["name"]])


def _add_error_responses(operation):
    reference = {"$ref": "#/components/schemas/Error"}
    public = "security" not in operation
    responses = operation.setdefault("responses", {})
    for status, description in ERROR_RESPONSES.items():
        if public and status in PUBLIC_ERRORS:
            continue
        documented = responses.setdefault(status, {"description": description})
        documented["content"] = {"application/json": {"schema": reference}}
        if status in {"409", "429", "503"}:
            documented["headers"] = dict(RETRY_AFTER)


def _body(pointer):
    return f"$response.body#/{pointer}"


def _links(source, status, targets, body=None, **parameters):
    """Links from ``source``'s ``status`` answer to each target operation (named after it)."""
    return [(source, status, target, parameters, body) for target in targets]


ID = _body("id")
CHECKOUT = {"date": "2099-01-01", "customer": {"name": "Ada", "email": "ada@example.com"}}
PROPOSAL = CHECKOUT | {"session_id": "chat-1"}

# The create→act flows, as OpenAPI links: (source operationId, status, target operationId, parameters, body)
LINKS = [
    # bookings
    *_links(
        "t_packages_create", "201", ["t_packages_retrieve", "t_packages_partial_update", "t_packages_destroy"], id=ID
    ),
    *_links(
        "public_checkouts_create", "201", ["t_bookings_retrieve", "t_bookings_cancel_create"], id=_body("booking/id")
    ),
    *_links("t_bookings_retrieve", "200", ["t_bookings_cancel_create"], id=ID),
    *_links("public_packages_list", "200", ["public_checkouts_create"], body=CHECKOUT | {"package": _body("0/id")}),
    *_links("t_packages_create", "201", ["public_checkouts_create"], body=CHECKOUT | {"package": ID}),
    *_links("t_packages_create", "201", ["t_proposals_create"], body=PROPOSAL | {"package": ID}),
    # proposals
    *_links("t_proposals_create", "201", ["t_proposals_retrieve"], id=ID),
    *_links(
        "t_proposals_create",
        "201",
        ["t_proposals_confirm_create", "t_proposals_reject_create"],
        body={"session_id": _body("session_id")},
        id=ID,
    ),
    *_links("t_proposals_confirm_create", "200", ["t_bookings_retrieve"], id=_body("booking/id")),
    # promo codes and their usages
    *_links(
        "t_promo_codes_create",
        "201",
        [
            "t_promo_codes_retrieve",
            "t_promo_codes_partial_update",
            "t_promo_codes_destroy",
            "t_promo_codes_activate_create",
            "t_promo_codes_deactivate_create",
        ],
        id=ID,
    ),
    *_links(
        "t_promo_codes_create",
        "201",
        ["t_promo_codes_validate_create", "t_promo_codes_redeem_create"],
        body={"code": _body("code"), "customer": "customer-1", "amount": "100.00"},
    ),
    *_links("t_promo_codes_redeem_create", "201", ["t_promo_usages_void_create"], id=_body("usage_id")),
    # redemption sessions
    *_links(
        "t_redemption_sessions_create",
        "201",
        ["t_redemption_sessions_retrieve", "t_redemption_sessions_cancel_create"],
        session_id=_body("session_id"),
    ),
    *_links(
        "t_redemption_sessions_create",
        "201",
        ["public_redemption_sessions_approve_create", "public_redemption_sessions_reject_create"],
        body={"approval_secret": _body("approval_secret")},
        session_id=_body("session_id"),
    ),
    *_links(
        "public_redemption_sessions_approve_create",
        "200",
        ["t_redemption_sessions_consume_create"],
        body={"amount": "1.00"},
        session_id=_body("session_id"),
    ),
    # profiles and their audit log
    *_links(
        "t_profiles_create",
        "201",
        ["t_profiles_retrieve", "t_profiles_history_list", "t_profiles_ancestors_list", "t_profiles_descendants_list"],
        id=ID,
    ),
    *_links(
        "t_profiles_create",
        "201",
        ["t_profiles_partial_update"],
        body={"version": _body("version"), "last_name": "Updated"},
        id=ID,
    ),
    *_links("t_profiles_create", "201", ["t_profiles_destroy"], id=ID, version=_body("version")),
    *_links("t_profiles_destroy", "200", ["t_profiles_restore_create"], body={"version": _body("version")}, id=ID),
    *_links("t_profiles_partial_update", "200", ["t_profiles_history_list"], id=ID),
    *_links("t_profiles_history_list", "200", ["t_audit_log_retrieve"], id=_body("0/id")),
    *_links(
        "t_profiles_history_list", "200", ["t_audit_log_undo_create"], body={"reason": "a mistake"}, id=_body("0/id")
    ),
]
