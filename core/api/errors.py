"""The one place where any error becomes an HTTP answer.

Every error body is ``{"error": {"code": "<stable_code>", "message": "<localized>"}}``;
validation errors add ``"fields"`` with the per-field details; a domain error with
parameters adds ``"details"`` (``{"current": 7}`` for version_conflict, ``{"parent":
"father"}`` for parent_locked, ``{"old": …, "new": …}`` for invalid_transition).
"""

import logging

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import DatabaseError, DataError, IntegrityError
from django.http import Http404, JsonResponse
from django.utils.translation import gettext as _
from django.views import defaults
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions as drf
from rest_framework.response import Response
from rest_framework.settings import api_settings

from core.exceptions import DomainError
from core.guards import outage_for, refusal_for

logger = logging.getLogger(__name__)

_DRF_CODES = {
    drf.NotAuthenticated: "not_authenticated",
    drf.AuthenticationFailed: "authentication_failed",
    drf.PermissionDenied: "permission_denied",
    drf.NotFound: "not_found",
    drf.MethodNotAllowed: "method_not_allowed",
    drf.NotAcceptable: "not_acceptable",
    drf.UnsupportedMediaType: "unsupported_media_type",
    drf.Throttled: "throttled",
    drf.ParseError: "malformed_request",
    drf.ValidationError: "invalid_input",
}


def error_body(code, message, **extra):
    return {"error": {"code": code, "message": str(message), **extra}}


def _detail(value):
    return value if isinstance(value, bool | int | float | str) or value is None else str(value)


def _domain_response(exc: DomainError):
    headers = {}
    if getattr(exc, "retry_after", None):  # a busy row, a database that did not answer
        headers["Retry-After"] = str(exc.retry_after)
    details = {key: _detail(value) for key, value in exc.params.items()}
    body = error_body(exc.code, exc.render(), **({"details": details} if details else {}))
    return Response(body, status=exc.status_code, headers=headers)


def exception_handler(exc, context):
    """DRF EXCEPTION_HANDLER: render every error in the one envelope, never a 500 for bad input."""
    if isinstance(exc, DomainError):
        return _domain_response(exc)
    if isinstance(exc, Http404):
        return Response(error_body("not_found", _("Not found.")), status=404)
    if isinstance(exc, DjangoPermissionDenied):
        exc = drf.PermissionDenied()
    if isinstance(exc, DjangoValidationError):
        # The ORM raises it for a value its field cannot take (a malformed UUID in a lookup).
        exc = drf.ValidationError(exc.message_dict if hasattr(exc, "error_dict") else exc.messages)
    if isinstance(exc, drf.APIException):
        code = next((c for cls, c in _DRF_CODES.items() if isinstance(exc, cls)), None) or exc.default_code
        headers = {}
        if getattr(exc, "auth_header", None):
            headers["WWW-Authenticate"] = exc.auth_header
        if getattr(exc, "wait", None):
            headers["Retry-After"] = str(int(exc.wait))
        if isinstance(exc, drf.ValidationError):
            fields = exc.detail
            if not isinstance(fields, dict):  # "fields" is always an object, as the schema says
                fields = {api_settings.NON_FIELD_ERRORS_KEY: fields}
            return Response(error_body(code, _("The request is not valid."), fields=fields), status=exc.status_code)
        return Response(error_body(code, exc.detail), status=exc.status_code, headers=headers)
    refusal = refusal_for(exc) if isinstance(exc, DatabaseError) else None
    if refusal is not None:  # a lock, a state-machine trigger or a named constraint refused the write
        return _domain_response(refusal)
    if isinstance(exc, IntegrityError):
        # A constraint no guard names: the database refused a write a guard should have refused first.
        # Nothing was written; answer 409, and log it as the bug it is.
        logger.error("unmapped integrity error: %s", exc)
        return Response(error_body("conflict", _("The request conflicts with the current state.")), status=409)
    if isinstance(exc, DataError):
        # A value its column cannot hold (an integer past bigint, a string past its length) that no
        # validator caught: its own code, since invalid_input promises "fields" saying where.
        return Response(error_body("value_out_of_range", _("The request is not valid.")), status=400)
    outage = outage_for(exc)
    if outage is not None:  # outside any guard (the authentication's read): as database_refusals names it
        logger.warning("%s: %s", outage.code, exc)
        return _domain_response(outage)
    return None  # a bug: let Django answer 500 and log it


def json_404(request, exception=None):
    """handler404: the JSON envelope under /api/, Django's page elsewhere."""
    if request.path.startswith("/api/"):
        return JsonResponse(error_body("not_found", _("Not found.")), status=404)
    return defaults.page_not_found(request, exception)


@csrf_exempt  # any method: it only ever answers 404
def api_route_not_found(request, *args, **kwargs):
    """The catch-all route under /api/ (config/urls.py)."""
    return JsonResponse(error_body("not_found", _("Not found.")), status=404)


def json_400(request, exception=None):
    """handler400 (a SuspiciousOperation such as a disallowed Host): the JSON envelope under /api/."""
    if request.path.startswith("/api/"):
        return JsonResponse(error_body("bad_request", _("The request is not valid.")), status=400)
    return defaults.bad_request(request, exception)


def json_500(request):
    if request.path.startswith("/api/"):
        return JsonResponse(error_body("server_error", _("Something went wrong on our side.")), status=500)
    return defaults.server_error(request)
