"""The one exception handler: every kind of error in the one envelope, with its status and headers."""

import psycopg.errors
import pytest
from django.db import DataError, InternalError, OperationalError, connection, transaction
from django.http import Http404
from rest_framework import exceptions as drf

from core.api.errors import exception_handler
from core.exceptions import (
    Conflict,
    DatabaseTimeout,
    DatabaseUnavailable,
    InvalidInput,
    LockContended,
    NotFound,
)
from core.guards import database_refusals
from tests.races import statement_timeout


def _caused_by(error, cause):
    error.__cause__ = cause
    return error


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (InvalidInput(), 400, "invalid_input"),
        (NotFound(), 404, "not_found"),
        (Conflict(), 409, "conflict"),
        (LockContended(), 409, "resource_locked"),
        (Http404(), 404, "not_found"),
        (drf.NotAuthenticated(), 401, "not_authenticated"),
        (drf.AuthenticationFailed(), 401, "authentication_failed"),
        (drf.PermissionDenied(), 403, "permission_denied"),
        (drf.MethodNotAllowed("PUT"), 405, "method_not_allowed"),
        (drf.UnsupportedMediaType("text/plain"), 415, "unsupported_media_type"),
        (drf.ParseError(), 400, "malformed_request"),
        (drf.Throttled(wait=3), 429, "throttled"),
        (drf.ValidationError({"amount": ["A valid number is required."]}), 400, "invalid_input"),
        (DataError("integer out of range"), 400, "value_out_of_range"),
        (_caused_by(OperationalError("lock"), psycopg.errors.LockNotAvailable()), 409, "resource_locked"),
        (_caused_by(OperationalError("timeout"), psycopg.errors.QueryCanceled()), 503, "database_timeout"),
        (OperationalError("connection refused"), 503, "database_unavailable"),
        (_caused_by(OperationalError("rolled back"), psycopg.errors.SerializationFailure()), 409, "resource_locked"),
        (
            _caused_by(InternalError("idle-in-transaction timeout"), psycopg.errors.IdleInTransactionSessionTimeout()),
            503,
            "database_unavailable",
        ),
    ],
)
def test_every_error_kind_renders_in_the_envelope(exc, status, code):
    response = exception_handler(exc, {})
    assert response.status_code == status
    assert response.data["error"]["code"] == code
    assert response.data["error"]["message"]


def test_domain_errors_carry_their_parameters_as_details():
    from core.exceptions import TransitionRefused, VersionConflict

    response = exception_handler(VersionConflict(current=7), {})
    assert response.status_code == 409
    assert response.data["error"]["details"] == {"current": 7}
    assert "7" in response.data["error"]["message"]
    assert exception_handler(TransitionRefused(old="held", new="held2"), {}).data["error"]["details"] == {
        "old": "held",
        "new": "held2",
    }
    assert "details" not in exception_handler(Conflict(), {}).data["error"]


def test_validation_errors_carry_field_details():
    response = exception_handler(drf.ValidationError({"amount": ["A valid number is required."]}), {})
    assert response.data["error"]["fields"] == {"amount": ["A valid number is required."]}


@pytest.mark.parametrize(
    "exc",
    [
        LockContended(),
        drf.Throttled(wait=3),
        _caused_by(OperationalError("lock"), psycopg.errors.LockNotAvailable()),
        OperationalError("connection refused"),
        _caused_by(OperationalError("timeout"), psycopg.errors.QueryCanceled()),
        _caused_by(InternalError("idle-in-transaction timeout"), psycopg.errors.IdleInTransactionSessionTimeout()),
    ],
)
def test_retryable_errors_say_when_to_retry(exc):
    assert int(exception_handler(exc, {})["Retry-After"]) >= 1


def test_django_validation_error_is_400_with_fields():
    from django.core.exceptions import ValidationError

    response = exception_handler(ValidationError("“x” is not a valid UUID."), {})
    assert response.status_code == 400 and response.data["error"]["code"] == "invalid_input"
    assert response.data["error"]["fields"] == {"non_field_errors": ["“x” is not a valid UUID."]}
    response = exception_handler(ValidationError({"session_id": ["Not a UUID."]}), {})
    assert response.data["error"]["fields"] == {"session_id": ["Not a UUID."]}


def test_fields_is_always_an_object_as_the_schema_says():
    response = exception_handler(drf.ValidationError("Pick a date in the future."), {})
    assert response.data["error"]["fields"] == {"non_field_errors": ["Pick a date in the future."]}


def test_a_bug_is_left_to_django_as_a_500():
    assert exception_handler(ZeroDivisionError(), {}) is None


@pytest.mark.django_db
def test_each_distinct_400_has_its_own_code_and_its_parameters_as_details(tenant):
    """The failures that all answered invalid_input, each raised where it really is."""
    from decimal import Decimal

    from profiles.models import Profile
    from promos.models import PromoCode
    from tests.promos.factories import PromoCodeFactory

    def answer(call, *args, **kwargs):
        with pytest.raises(InvalidInput) as info:  # still InvalidInput: 400 for every caller that catches the kind
            call(*args, **kwargs)
        response = exception_handler(info.value, {})
        assert response.status_code == 400
        return response.data["error"]["code"], response.data["error"].get("details")

    kid = Profile.objects.create_profile(tenant=tenant, first_name="Kid", sex="male")
    assert answer(Profile.objects.update_profile, kid.pk, tenant=tenant, version=1, nickname="x") == (
        "unknown_field",
        {"field": "nickname"},
    )
    assert answer(Profile.objects.create_profile, tenant=tenant, first_name="No sex") == ("invalid_profile_data", None)
    promo = PromoCodeFactory(tenant=tenant)
    assert answer(PromoCode.objects.validate, promo.code, tenant=tenant, customer="c", amount="0") == (
        "invalid_amount",
        {"maximum": "99999999"},  # not above any currency's ceiling; the code's own is judged once it is read
    )
    assert answer(
        PromoCode.objects.create_code, tenant=tenant, code="BAD", bonus_type="fixed", bonus_value=Decimal("0")
    ) == ("promo_invalid", None)
    response = exception_handler(DataError("integer out of range"), {})
    assert (response.status_code, response.data["error"]["code"]) == (400, "value_out_of_range")
    assert "fields" not in response.data["error"]  # invalid_input is the code that promises "fields"


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "sql, refusal",
    [
        ("SELECT pg_sleep(1)", DatabaseTimeout),  # past the statement_timeout below
        ("DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = 'serialization_failure'; END $$", LockContended),
        ("DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = 'admin_shutdown'; END $$", DatabaseUnavailable),
    ],
    ids=["statement timeout", "serialization failure", "server shutting down"],
)
def test_every_path_gets_a_database_that_did_not_answer_as_a_domain_error_to_retry(sql, refusal):
    """``database_refusals`` (around every manager's transaction, the admin's and the commands') names a
    database that did not answer as it names a busy row: a command exits 3, the admin says so, the API 503s."""
    with pytest.raises(refusal) as raised, statement_timeout(200), database_refusals(), transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(sql)
    assert raised.value.retry_later


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("errcode", ["data_corrupted", "program_limit_exceeded", "object_not_in_prerequisite_state"])
def test_an_error_a_retry_would_meet_again_is_never_taken_for_an_outage(errcode):
    """A corrupted index, a program limit, a bug: named "try again shortly" (exit 3, 503) it would be run again
    and again in silence; it is left to fail loudly (a traceback, exit 1, a 500 the error log names)."""
    with pytest.raises((OperationalError, InternalError)), database_refusals(), transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(f"DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = '{errcode}'; END $$")
