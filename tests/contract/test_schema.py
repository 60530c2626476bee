"""The schema says what the server does: typed errors, Idempotency-Key, security, ids, links, strict bodies."""

import pytest
from django.urls import get_resolver

from core.api.schema import honours_idempotency_key
from tests.refusals import assert_error

BASE = "/api/t/acme"
MUTATING = {"post", "put", "patch", "delete"}
# POSTs that change nothing, or that are deduplicated by the sender's own id instead of a key.
POSTS_WITHOUT_KEY = {
    "/api/t/{tenant}/promo-codes/validate": "a read-only preview; reserves nothing",
    "/api/webhooks/payments": "the provider's events are deduplicated by their event id",
}


def operations(schema):
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            yield path, method, operation


@pytest.mark.parametrize(
    "path",
    [
        "/api/public/{tenant}/checkouts",
        "/api/public/{tenant}/availability",
        "/api/webhooks/payments",
        "/api/t/{tenant}/bookings/{id}/cancel",
        "/api/t/{tenant}/packages/{id}",
        "/api/t/{tenant}/proposals",
        "/api/t/{tenant}/proposals/{id}/confirm",
        "/api/t/{tenant}/proposals/{id}/reject",
        "/api/t/{tenant}/profiles",
        "/api/t/{tenant}/profiles/{id}",
        "/api/t/{tenant}/profiles/{id}/restore",
        "/api/t/{tenant}/profiles/{id}/history",
        "/api/t/{tenant}/profiles/{id}/ancestors",
        "/api/t/{tenant}/profiles/{id}/descendants",
        "/api/t/{tenant}/audit-log/{id}/undo",
        "/api/t/{tenant}/promo-codes/redeem",
        "/api/t/{tenant}/promo-codes/validate",
        "/api/t/{tenant}/promo-usages/{id}/void",
        "/api/t/{tenant}/redemption-sessions/{session_id}/consume",
        "/api/public/redemption-sessions/{session_id}/approve",
    ],
)
def test_every_apps_endpoints_are_described(schema, path):
    assert path in schema["paths"], sorted(schema["paths"])


def test_every_error_answer_is_the_typed_envelope_and_retry_after_is_declared(schema):
    for path, method, operation in operations(schema):
        for status, response in operation["responses"].items():
            if status.startswith(("4", "5")):
                content = response["content"]["application/json"]["schema"]
                assert content == {"$ref": "#/components/schemas/Error"}, (method, path, status)
        for status in ("409", "429", "503"):
            assert "Retry-After" in operation["responses"][status]["headers"], (method, path, status)
    error = schema["components"]["schemas"]["Error"]["properties"]["error"]
    assert {"code", "message", "fields", "details"} <= set(error["properties"])


def test_idempotency_key_is_declared_on_every_post_that_changes_something(schema):
    declared, missing = set(), []
    for path, method, operation in operations(schema):
        names = {parameter["name"] for parameter in operation.get("parameters", [])}
        if "Idempotency-Key" in names:
            declared.add((method, path))
            header = next(p for p in operation["parameters"] if p["name"] == "Idempotency-Key")
            assert header["schema"]["minLength"] == 1 and header["schema"]["maxLength"] == 255
        elif method == "post" and path not in POSTS_WITHOUT_KEY:
            missing.append(path)
    assert not missing, f"POSTs that do not honour Idempotency-Key: {missing}"
    assert len(declared) == 19  # the 18 the review counted, and promo-code create


def test_the_header_is_declared_exactly_where_a_handler_honours_it(schema):
    """The schema reads the @idempotent mark; walk the URL map to see every handler agrees."""
    honoured = set()
    for pattern in _patterns(get_resolver()):
        view = getattr(pattern.callback, "view_class", None)
        for method in MUTATING:
            if view is not None and honours_idempotency_key(getattr(view, method, None)):
                honoured.add((view.__name__, method))
    declared_views = len(
        [
            1
            for _, _, operation in operations(schema)
            for p in operation.get("parameters", [])
            if p["name"] == "Idempotency-Key"
        ]
    )
    assert len(honoured) == declared_views


def _patterns(resolver):
    for pattern in resolver.url_patterns:
        if hasattr(pattern, "url_patterns"):
            yield from _patterns(pattern)
        else:
            yield pattern


def test_public_operations_declare_no_security_and_the_rest_require_a_token(schema):
    schemes = schema["components"]["securitySchemes"]
    bearer = [name for name, scheme in schemes.items() if scheme.get("scheme") == "bearer"]
    assert bearer, schemes
    for path, method, operation in operations(schema):
        public = path.startswith(("/api/public/", "/api/webhooks/"))
        if public:
            assert "security" not in operation, (method, path)
        else:
            assert operation["security"] and {} not in operation["security"], (method, path)
            assert any(bearer[0] in requirement for requirement in operation["security"]), (method, path)


def test_ids_have_one_type_in_paths_and_bodies(schema):
    for path, method, operation in operations(schema):
        for parameter in operation.get("parameters", []):
            if parameter["in"] == "path" and parameter["name"] == "id":
                assert parameter["schema"]["type"] == "integer", (method, path)
            if parameter["in"] == "path" and parameter["name"] == "session_id":
                assert parameter["schema"]["format"] == "uuid", (method, path)
    components = schema["components"]["schemas"]
    for name in ("Package", "Booking", "Proposal", "PromoCode", "Profile", "AuditEntry"):
        assert components[name]["properties"]["id"]["type"] == "integer", name
    assert components["PromoUsage"]["properties"]["usage_id"]["type"] == "integer"


def test_request_bodies_forbid_unknown_fields(schema):
    for name, component in schema["components"]["schemas"].items():
        if name.endswith("Request"):
            assert component.get("additionalProperties") is False, name


def test_nullable_fields_are_declared_nullable(schema):
    entry = schema["components"]["schemas"]["AuditEntry"]["properties"]
    assert entry["actor"].get("nullable") and entry["undone_by"].get("nullable")
    patch = schema["components"]["schemas"]["PatchedProfileUpdateInputRequest"]
    assert patch["required"] == ["version"]  # PATCH of a profile needs the version it read
    delete = schema["paths"]["/api/t/{tenant}/profiles/{id}"]["delete"]["responses"]
    assert "200" in delete and "204" not in delete  # a soft delete answers the profile


def test_links_name_operations_that_exist(schema):
    ids = {operation["operationId"] for _, _, operation in operations(schema)}
    links = [
        link
        for _, _, operation in operations(schema)
        for response in operation["responses"].values()
        for link in response.get("links", {}).values()
    ]
    assert len(links) >= 25
    assert {link["operationId"] for link in links} <= ids


def test_webhook_declares_its_body_and_signature_header(schema):
    webhook = schema["paths"]["/api/webhooks/payments"]["post"]
    signature = next(p for p in webhook["parameters"] if p["name"] == "Stripe-Signature")
    assert signature["required"] and signature["in"] == "header"
    body = webhook["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["required"]) == {"id", "type", "data"}


# --- the server refuses what the schema forbids ------------------------------------------------


def test_unknown_and_read_only_fields_are_refused_by_name(api_client, tenant):
    response = api_client.post(
        f"{BASE}/packages", {"name": "Tour", "price": "10.00", "id": 5, "colour": "red"}, format="json"
    )
    assert_error(response, 400, "invalid_input")
    assert response.json()["error"]["fields"] == {"id": ["Unknown field."], "colour": ["Unknown field."]}


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("price", 10, "Must be a string."),
        ("name", 5, "Must be a string."),
        ("daily_capacity", "3", "Must be an integer."),
        ("daily_capacity", True, "Must be an integer."),
        ("active", "true", "Must be true or false."),
        ("active", 1, "Must be true or false."),
    ],
)
def test_a_value_of_the_wrong_json_type_is_refused(api_client, tenant, field, value, message):
    body = {"name": "Tour", "price": "10.00", field: value}
    response = api_client.post(f"{BASE}/packages", body, format="json")
    assert_error(response, 400, "invalid_input")
    assert response.json()["error"]["fields"] == {field: [message]}


@pytest.mark.parametrize("price", ["", "0", "00", "1e3", " 5", "5.0001", "-1", "١٢"])
def test_prices_follow_the_schema_pattern(api_client, tenant, price):
    response = api_client.post(f"{BASE}/packages", {"name": "Tour", "price": price}, format="json")
    if price == "0":
        assert response.status_code == 201, response.content  # free is a price
    else:
        assert_error(response, 400, "invalid_input")
        assert set(response.json()["error"]["fields"]) == {"price"}


@pytest.mark.parametrize(
    "query",
    [
        *("limit=abc", "limit=0", "limit=501", "offset=-1", "offset=null", "limit=5&limit=6", "status=", "status=paid"),
        *("limit=٥", "limit=5.0", "limit=%205", "offset=0x1"),  # no integer as the schema writes one
    ],
)
def test_bad_query_parameters_are_refused_by_name(api_client, tenant, query):
    response = api_client.get(f"{BASE}/bookings?{query}")
    assert_error(response, 400, "invalid_input")
    assert set(response.json()["error"]["fields"]) == {query.split("=")[0]}


def test_good_query_parameters_still_work(api_client, tenant):
    response = api_client.get(f"{BASE}/bookings?limit=5&offset=0&status=held")
    assert response.status_code == 200 and response.json()["count"] == 0


@pytest.mark.parametrize("key", [" leading", "trailing ", "é", "x" * 256])
def test_an_idempotency_key_outside_the_declared_pattern_is_400(api_client, tenant, key):
    response = api_client.post(
        f"{BASE}/packages", {"name": "Tour", "price": "1.00"}, format="json", HTTP_IDEMPOTENCY_KEY=key
    )
    assert_error(response, 400, "idempotency_key_invalid")


def test_promo_code_create_honours_the_idempotency_key(api_client, tenant):
    body = {"code": "ONCE", "bonus_type": "fixed", "bonus_value": "5.00"}
    first = api_client.post(f"{BASE}/promo-codes", body, format="json", HTTP_IDEMPOTENCY_KEY="create-once")
    again = api_client.post(f"{BASE}/promo-codes", body, format="json", HTTP_IDEMPOTENCY_KEY="create-once")
    assert first.status_code == again.status_code == 201
    assert again["Idempotent-Replayed"] == "true" and again.json() == first.json()


@pytest.mark.parametrize("method", ["get", "post", "delete"])
def test_an_id_that_is_not_a_number_is_the_json_404_whatever_the_method(api_client, tenant, method):
    response = getattr(api_client, method)(f"{BASE}/packages/null,null")
    assert_error(response, 404, "not_found")


@pytest.mark.django_db
@pytest.mark.parametrize("version", ["%0A", "1%0D%0ASet-Cookie:%20x=1", "2"])
def test_a_version_asked_of_the_schema_is_ignored_never_a_server_error(client, version):
    """Regression: drf-spectacular put ``?version=`` unchecked in Content-Disposition: a newline was a 500
    (for anyone: the schema is public), after building the whole schema."""
    answer = client.get(f"/api/schema/?version={version}")
    assert answer.status_code == 200
    assert answer["Content-Disposition"] == 'inline; filename="Lockstep API.yaml"'


@pytest.mark.parametrize("currency, written", [("KWD", "0.005"), ("JPY", "5")])
def test_a_fixed_bonus_is_written_as_the_schema_says_in_every_currency(api_client, tenant, schema, currency, written):
    """Regression (schemathesis, ST108): a fixed bonus is written with its currency's own places (four for UYW and
    CLF, fund units no longer payable, broke the schema's pattern of three)."""
    import re

    value = {"KWD": "0.005", "JPY": "5"}[currency]
    body = {"code": f"B{currency}", "bonus_type": "fixed", "bonus_value": value, "currency": currency}
    created = api_client.post(f"{BASE}/promo-codes", body, format="json")
    assert created.status_code == 201, created.content
    assert created.json()["bonus_value"] == written
    pattern = schema["components"]["schemas"]["PromoCode"]["properties"]["bonus_value"]["pattern"]
    assert re.fullmatch(pattern, written)


def test_the_currencies_offered_are_those_a_customer_can_pay_in_today(schema):
    """The schema's currency enum (core.money.payable_currencies): legal tender somewhere today, so a client
    choosing from it never meets unknown_currency, nor a provider that refuses every checkout."""
    offered = set(schema["components"]["schemas"]["CurrencyEnum"]["enum"])
    assert {"USD", "EUR", "JPY", "KWD", "GBP", "VES"} <= offered  # VES: a new code, in ISO 4217 since 2018
    assert not offered & {"DEM", "FRF", "HRK", "CLF", "UYW", "USN", "XTS", "XAU", "XDR"}
