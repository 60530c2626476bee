"""OpenAPI post-processing: every operation documents the one error envelope."""

ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "string", "description": "Stable, machine-readable error code."},
                "message": {"type": "string", "description": "Human-readable message in the request's language."},
                "fields": {"type": "object", "description": "Per-field details of a validation error."},
                "details": {
                    "type": "object",
                    "description": "The error's parameters (e.g. `current` for version_conflict).",
                },
            },
            "required": ["code", "message"],
        }
    },
    "required": ["error"],
}

ERROR_RESPONSES = {
    "400": "Invalid input (`invalid_input`, `malformed_request`, ...).",
    "401": "Missing or bad credentials.",
    "403": "Not allowed.",
    "404": "Not found, or not yours.",
    "405": "Method not allowed.",
    "409": "Refused by the current state or a lock (`resource_locked` comes with Retry-After).",
    "415": "Unsupported media type.",
    "422": "Idempotency-Key reused with a different request.",
    "429": "Throttled.",
    "503": "The database is unavailable or timed out; retry.",
}


def add_error_responses(result, generator, request, public):
    """drf-spectacular POSTPROCESSING_HOOK: add the error envelope to every operation."""
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    reference = {"$ref": "#/components/schemas/Error"}
    for operations in result.get("paths", {}).values():
        for method, operation in operations.items():
            if method not in {"get", "post", "put", "patch", "delete"}:
                continue
            responses = operation.setdefault("responses", {})
            for status, description in ERROR_RESPONSES.items():
                responses.setdefault(
                    status, {"description": description, "content": {"application/json": {"schema": reference}}}
                )
    return result
