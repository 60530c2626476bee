"""Request ids, request-scoped log fields, JSON logs and the per-request metrics.

``ObservabilityMiddleware`` (first in MIDDLEWARE) gives every request an id — the
client's ``X-Request-ID`` when it is 1-128 printable ASCII characters without spaces,
else a fresh uuid4 hex — keeps it (and the ``tenant`` URL argument, once the URL is
resolved) in a context variable for the request, answers it in ``X-Request-ID``, records
the request's metrics (core.metrics) and logs each refused API request at INFO.
``RequestContextFilter`` puts ``request_id`` and ``tenant`` on every log record;
``JSONFormatter`` writes one JSON object per line (LOG_FORMAT=json).
"""

import json
import logging
import re
import time
import uuid
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime

from django.utils.encoding import escape_uri_path

from core import metrics

REQUEST_ID_HEADER = "X-Request-ID"
# Visible ASCII only: an id goes verbatim into log lines, where a space, a control
# character or a newline could forge a field or a line.
_CLIENT_REQUEST_ID = re.compile(r"[!-~]{1,128}")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
NO_VALUE = "-"

refusal_logger = logging.getLogger("lockstep.refusals")


@dataclass
class RequestContext:
    request_id: str
    tenant: str = NO_VALUE


_current: ContextVar[RequestContext | None] = ContextVar("lockstep_request", default=None)


def current_request_id():
    """The id of the request being answered in this context, or None outside one."""
    context = _current.get()
    return context.request_id if context else None


def request_id_for(request):
    """The client's X-Request-ID when acceptable, else a new uuid4 hex."""
    given = request.headers.get(REQUEST_ID_HEADER, "")
    return given if _CLIENT_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


def _route(request):
    match = getattr(request, "resolver_match", None)
    return f"/{match.route}" if match is not None and match.route is not None else "<unmatched>"


def _error_code(response):
    """The error envelope's code (``{"error": {"code": …}}``) of a JSON answer, or None."""
    if hasattr(response, "data"):  # a DRF Response: its data, no parsing
        return _error_code_of(response.data)
    if response.get("Content-Type", "").startswith("application/json") and not response.streaming:
        try:  # a plain JsonResponse in the envelope (the JSON 404 of an unknown /api/ path)
            return _error_code_of(json.loads(response.content))
        except ValueError:
            return None
    return None


def _error_code_of(body):
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None


class ObservabilityMiddleware:
    """Request id, request-scoped log fields, metrics and a log line per refusal. No database statement."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        started = time.perf_counter()
        context = RequestContext(request_id=request_id_for(request))
        request.request_id = context.request_id
        token = _current.set(context)
        try:
            response = self.get_response(request)
            response[REQUEST_ID_HEADER] = context.request_id
            self._record(request, response, time.perf_counter() - started)
            return response
        finally:
            _current.reset(token)

    def process_view(self, request, view_func, view_args, view_kwargs):
        context, tenant = _current.get(), view_kwargs.get("tenant")
        if context is not None and isinstance(tenant, str):
            context.tenant = tenant
        return None

    def _record(self, request, response, elapsed):
        status = response.status_code
        method = request.method if request.method in _METHODS else "other"
        route = _route(request)
        metrics.REQUEST_DURATION.labels(method, route, str(status)).observe(elapsed)
        if response.get("Idempotent-Replayed") == "true":
            metrics.IDEMPOTENCY_REPLAYS.inc()
            return  # the answer was counted (and logged) when it was first given
        if 400 <= status < 500:
            code = _error_code(response)
            if code is None:
                return  # not an API refusal (an admin page's 404, a 401 from /metrics)
            metrics.REFUSALS.labels(code, str(status)).inc()
            if code in metrics.LOCK_CODES:
                metrics.LOCK_CONFLICTS.labels(code).inc()
            path = escape_uri_path(request.path)  # percent-encoded: a decoded %0A would forge a text line
            refusal_logger.info(
                "refused %s %s: %s %s",
                method,
                path,
                status,
                code,
                extra={"code": code, "status": status, "method": method, "route": route, "path": path},
            )


class RequestContextFilter(logging.Filter):
    """Put ``request_id`` and ``tenant`` ("-" outside a request) on every record; never drops one."""

    def filter(self, record):
        context = _current.get()
        record.request_id = context.request_id if context else NO_VALUE
        record.tenant = context.tenant if context else NO_VALUE
        return True


# Attributes every LogRecord has: anything else on a record came from ``extra=`` (but
# django.request's ``request`` object, neither JSON nor useful beside the message).
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "request"}


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, tenant, the extras, the exception."""

    def format(self, record):
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", NO_VALUE),
            "tenant": getattr(record, "tenant", NO_VALUE),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD:
                entry.setdefault(key, value)  # an extra never overwrites the fields above
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)
