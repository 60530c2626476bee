"""Schemathesis hooks (SCHEMATHESIS_HOOKS=tests.contract.contract_hooks).

``documented_refusals_only`` narrows ``positive_data_acceptance``: a request the schema calls
valid may still be refused with 400 by a rule no JSON Schema can state (a date in the past, an
end before its start, a currency's own decimals, a parent that does not exist), but only with
that rule's documented code; and with 422 only when the generator reused an Idempotency-Key.
"""

import schemathesis

# operation label -> codes of rules across fields, over time or across resources
CROSS_FIELD_CODES = {
    "GET /api/public/{tenant}/availability": {"date_range_invalid"},
    "POST /api/public/{tenant}/checkouts": {"date_in_past"},
    "POST /api/t/{tenant}/proposals": {"date_in_past"},
    # a price's places and ceiling are its currency's (core.money.max_amount), another field
    "POST /api/t/{tenant}/packages": {"amount_precision", "amount_too_large"},
    "PUT /api/t/{tenant}/packages/{id}": {"amount_precision", "amount_too_large"},
    "PATCH /api/t/{tenant}/packages/{id}": {"amount_precision", "amount_too_large"},
    # a promo amount's places and ceiling are its code's or session's currency's, which the schema cannot know
    "POST /api/t/{tenant}/promo-codes": {"amount_precision", "invalid_amount"},
    "PUT /api/t/{tenant}/promo-codes/{id}": {"amount_precision", "invalid_amount"},
    "PATCH /api/t/{tenant}/promo-codes/{id}": {"amount_precision", "invalid_amount"},
    "POST /api/t/{tenant}/promo-codes/validate": {"amount_precision", "invalid_amount", "currency_mismatch"},
    "POST /api/t/{tenant}/promo-codes/redeem": {"amount_precision", "invalid_amount", "currency_mismatch"},
    "POST /api/t/{tenant}/redemption-sessions": {"amount_precision", "invalid_amount"},
    "POST /api/t/{tenant}/redemption-sessions/{session_id}/consume": {
        "amount_precision",
        "invalid_amount",
        "currency_mismatch",
    },
    "POST /api/t/{tenant}/profiles": {"invalid_dates", "parent_not_found", "parent_wrong_sex"},
    "PATCH /api/t/{tenant}/profiles/{id}": {"invalid_dates", "parent_not_found", "parent_wrong_sex"},
    # a signature cannot be generated from the schema: it is an HMAC of the body
    "POST /api/webhooks/payments": {"invalid_signature", "malformed_event"},
}
# operation label -> fields whose invalid_input is a rule across fields
CROSS_FIELD_FIELDS = {
    "POST /api/t/{tenant}/promo-codes": {"ends_at", "bonus_value"},
    "PUT /api/t/{tenant}/promo-codes/{id}": {"ends_at", "bonus_value"},
    "PATCH /api/t/{tenant}/promo-codes/{id}": {"ends_at", "bonus_value"},
}


@schemathesis.check
def documented_refusals_only(ctx, response, case):
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or response.status_code not in (400, 422):
        return None
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        raise AssertionError(f"{response.status_code} without the error envelope")
    if _undeclared_fields(case):
        return None  # the generator added a property the schema forbids: not valid data after all
    label, code = case.operation.label, error.get("code")
    if response.status_code == 422:
        assert code == "idempotency_key_reused", f"422 {code} for a schema-valid request"
        return None
    if code in CROSS_FIELD_CODES.get(label, ()):
        return None
    fields = set(error.get("fields") or {})
    if code == "invalid_input" and fields and fields <= CROSS_FIELD_FIELDS.get(label, set()):
        return None
    raise AssertionError(f"schema-valid request refused: 400 {code} {error.get('fields') or error.get('message')}")


def _undeclared_fields(case):
    if not isinstance(case.body, dict):
        return False
    try:
        schema = case.operation.definition.raw["requestBody"]["content"]["application/json"]["schema"]
        if "$ref" in schema:
            schema = case.operation.schema.raw_schema["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    except (KeyError, TypeError):
        return False
    return bool(set(case.body) - set(schema.get("properties", {})))
