"""Token authentication: ``Token <key>`` and ``Bearer <key>``, DRF's answers otherwise, an HTTP bearer scheme."""

import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from core.api.authentication import TokenAuthentication
from tests.refusals import assert_error

TENANT = "/api/t/acme/"


@pytest.fixture
def key(member):
    return Token.objects.get_or_create(user=member)[0].key


def get(header, path=TENANT, **extra):
    return APIClient().get(path, HTTP_AUTHORIZATION=header, **extra)


@pytest.mark.parametrize("keyword", ["Token", "Bearer", "token", "bearer", "TOKEN", "BEARER", "BeArEr"])
def test_both_keywords_authenticate_in_any_case(tenant, key, keyword):
    response = get(f"{keyword} {key}")
    assert response.status_code == 200, response.content
    assert response.json()["slug"] == "acme"


@pytest.mark.parametrize("keyword", ["Token", "Bearer", "bearer"])
def test_a_bad_token_is_401_authentication_failed_with_the_challenge(tenant, keyword):
    response = get(f"{keyword} not-a-token")
    error = assert_error(response, 401, "authentication_failed")
    assert error["message"] == "Invalid token."
    assert response["WWW-Authenticate"] == "Token"


@pytest.mark.parametrize(
    "header, message",
    [
        ("Bearer", "Invalid token header. No credentials provided."),
        ("Bearer a b", "Invalid token header. Token string should not contain spaces."),
        ("Token a b", "Invalid token header. Token string should not contain spaces."),
    ],
)
def test_a_malformed_header_is_refused_as_drf_refuses_it(tenant, header, message):
    assert assert_error(get(header), 401, "authentication_failed")["message"] == message


@pytest.mark.parametrize("path", [TENANT, "/api/schema/"])
@pytest.mark.parametrize("token", ["a\x00b", "\x00", "{key}\x00"])
def test_a_nul_byte_in_the_token_is_401_and_counts_as_a_failure(tenant, key, settings, path, token):
    """Regression: a NUL reached the token query, which PostgreSQL cannot take: 400 value_out_of_range
    instead of 401, and the failure went uncounted by the auth_failure bucket."""
    settings.LOCKSTEP_THROTTLE_RATES = {**settings.LOCKSTEP_THROTTLE_RATES, "auth_failure": "1/minute"}
    header = f"Bearer {token.format(key=key)}"
    error = assert_error(get(header, path, HTTP_ACCEPT="application/json"), 401, "authentication_failed")
    assert error["message"] == "Invalid token header. Token string should not contain invalid characters."
    assert_error(get(header, path, HTTP_ACCEPT="application/json"), 429, "throttled")


def test_an_inactive_users_token_is_refused(tenant, member, key):
    member.is_active = False
    member.save()
    assert assert_error(get(f"Bearer {key}"), 401, "authentication_failed")["message"] == "User inactive or deleted."


def test_another_scheme_or_none_is_not_ours_to_refuse(tenant, key):
    assert_error(get("Basic dXNlcjpwYXNz"), 401, "not_authenticated")
    assert_error(APIClient().get(TENANT), 401, "not_authenticated")


def test_the_message_is_localized(tenant):
    response = get("Bearer nope", HTTP_ACCEPT_LANGUAGE="ar")
    assert assert_error(response, 401, "authentication_failed")["message"] != "Invalid token."


def test_a_valid_token_costs_the_token_lookup_and_nothing_for_failures(tenant, key, settings):
    """The auth_failure bucket is touched only when authentication fails."""
    settings.LOCKSTEP_THROTTLE_RATES = {**settings.LOCKSTEP_THROTTLE_RATES, "auth_failure": "5/minute"}
    with CaptureQueriesContext(connection) as queries:
        assert get(f"Bearer {key}").status_code == 200
    assert not [q for q in queries if "throttle_auth_failure" in q["sql"]]
    with CaptureQueriesContext(connection) as queries:
        assert get("Bearer wrong").status_code == 401
    assert len([q for q in queries if "throttle_auth_failure" in q["sql"]]) == 1


def test_settings_use_this_class_before_sessions():
    classes = django_settings.REST_FRAMEWORK["DEFAULT_AUTHENTICATION_CLASSES"]
    assert classes == [
        "core.api.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ]
    assert TokenAuthentication.keywords == ("Token", "Bearer")


# --- the OpenAPI schema ------------------------------------------------------------------


def test_the_schema_declares_an_http_bearer_scheme_that_mentions_token(schema):
    schemes = schema["components"]["securitySchemes"]
    assert set(schemes) == {"bearerAuth", "cookieAuth"}, schemes
    bearer = schemes["bearerAuth"]
    assert bearer["type"] == "http" and bearer["scheme"] == "bearer"
    assert "Token <key>" in bearer["description"]


def test_every_tenant_operation_accepts_the_bearer_scheme(schema):
    tenant_operations = [
        operation
        for path, methods in schema["paths"].items()
        if path.startswith("/api/t/")
        for method, operation in methods.items()
        if method in {"get", "post", "put", "patch", "delete"}
    ]
    assert tenant_operations
    for operation in tenant_operations:
        assert {"bearerAuth": []} in operation["security"], operation["operationId"]


def test_the_scheme_is_registered_at_startup_without_importing_the_class_first():
    """core.apps imports the extension; a fresh process shows the scheme with nothing else imported."""
    import subprocess
    import sys

    from tests.proof.processes import ROOT, child_env, database_url

    code = (
        "import django; django.setup()\n"
        "from drf_spectacular.extensions import OpenApiAuthenticationExtension as E\n"
        "print(sorted(str(getattr(c, 'name', '')) for c in E._registry))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=child_env(database_url(django_settings.DATABASES["default"])),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "bearerAuth" in result.stdout
