"""Schemathesis over the live OpenAPI schema, authenticated as a demo member.

Every operation is fed generated input (valid and invalid); every answer must be
a non-5xx response whose body matches the schema (the error envelope included).
Path parameter ``tenant`` is pinned to ``demo`` so the fuzzing reaches real code
instead of stopping at the tenant 404.
"""

import io

import schemathesis
from django.core.management import call_command
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from hypothesis import HealthCheck, given, settings
from rest_framework.authtoken.models import Token
from schemathesis.checks import not_a_server_error, response_schema_conformance

from config.wsgi import application

EXAMPLES_PER_OPERATION = 15


def test_no_server_errors_and_responses_match_schema(db):
    # Calls go straight to the WSGI app; like Django's test client, keep the
    # request signals from closing the test's connection mid-transaction.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        _fuzz_every_operation()
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


def _fuzz_every_operation():
    call_command("seed_demo", stdout=io.StringIO())
    token = Token.objects.get(user__username="demo-api").key
    schema = schemathesis.openapi.from_wsgi("/api/schema/", application)
    failures, operations = [], 0

    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        def fuzz(case):
            if "tenant" in (case.path_parameters or {}):
                case.path_parameters["tenant"] = "demo"
            case.call_and_validate(
                headers={"Authorization": f"Token {token}"},
                checks=[not_a_server_error, response_schema_conformance],
            )

        try:
            fuzz()
        except Exception as failure:  # collect them all, report at once
            failures.append(f"{operation.method.upper()} {operation.path}: {failure}")

    assert operations > 0
    assert not failures, "\n\n".join(failures)
