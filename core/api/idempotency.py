"""``Idempotency-Key`` support for POST handlers.

Decorate a handler with ``@idempotent()``. With the header present:

- same key + same body replays the first answer (``Idempotent-Replayed: true``);
- same key + another body or path: 422 ``idempotency_key_reused``;
- same key while the first request runs: 409 ``idempotency_key_in_progress``.

Default mode runs the handler inside the transaction that claims the key and
stores the answer, so the record and the work commit together or not at all.
``two_phase=True`` is for handlers that must commit before calling out (a payment
provider): the claim commits first as "in progress", the handler runs with its own
transactions, and the answer is stored afterwards; should the process die in
between, the key is reclaimable after IDEMPOTENCY_IN_PROGRESS_TIMEOUT. The handler
notes its work on the key in the transaction that commits it (``note_work(request, id)``:
the booking it held or cancelled), so a retry that takes over the key of an attempt that
died after that commit calls the view's ``resume(request, work_id, …)`` — finish that work
(open the checkout it never opened) and answer with it — instead of doing the work again
(a second hold, a second pay link). An attempt that died before that commit left no work,
and the retry runs the handler.

Answers are not stored for 5xx or for lock contention (``Retry-After``): those
are worth retrying, so the key stays free.

``sealed=("field", …)`` names top-level fields of the answer that are secrets shown once (a
redemption session's approval secret, whose row keeps only its hash): the record keeps them
encrypted (Fernet, from the ``cryptography`` package, under a key derived from SECRET_KEY; the
SECRET_KEY_FALLBACKS still open what they sealed), so the table, a backup of it or its admin page
never shows one, and a replay decrypts them. One sealed under a key no longer configured is
replayed as null.
"""

import base64
import hashlib
import json
import re
from functools import wraps

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.db import transaction
from django.utils.crypto import salted_hmac
from rest_framework.response import Response
from rest_framework.utils.encoders import JSONEncoder

from core.api.inputs import IDEMPOTENCY_KEY_PATTERN
from core.exceptions import IdempotencyKeyInvalid
from core.guards import database_refusals
from core.jsonb import jsonb_safe
from core.models import IdempotencyKey

HEADER = "Idempotency-Key"
CLAIM_ATTR = "_two_phase_claim"  # on the request: the claim its handler notes its work on


def _principal(request):
    """Scope keys to the user; anonymous callers share no namespace beyond one path.

    Anonymous callers cannot be told apart, so their keys are scoped to the path
    (tenant and resource included): two storefronts that happen to pick the same
    key for different tenants or resources neither collide nor learn of each other.
    """
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        return f"user:{user.pk}"
    return f"anonymous:{hashlib.sha256(request.path.encode()).hexdigest()}"


def _fingerprint(request):
    body = json.dumps(request.data, sort_keys=True, cls=JSONEncoder)
    return hashlib.sha256(f"{request.method}\n{request.path}\n{body}".encode()).hexdigest()


def _stored_path(path):
    """The path as the record keeps it: a path its column cannot hold (longer than it: a 600-digit id still
    routes; or with a NUL, ``%00``, which PostgreSQL's text refuses) by its digest, so the key is claimed as
    for any path and the handler gives its own answer (a 404)."""
    if len(path) <= IdempotencyKey._meta.get_field("path").max_length and "\x00" not in path:
        return path
    return "sha256:" + hashlib.sha256(path.encode("utf-8", "surrogatepass")).hexdigest()


def _valid_key(key):
    return re.fullmatch(IDEMPOTENCY_KEY_PATTERN, key) is not None


def _as_json(data):
    """The answer as plain JSON that PostgreSQL's jsonb accepts.

    jsonb refuses NUL and lone surrogates, which a validation message may quote
    back from the client's input; they are stored as U+FFFD / "?" so storing the
    answer can never fail (and leave the key stuck, or turn the answer into another).
    """
    return jsonb_safe(json.loads(json.dumps(data, cls=JSONEncoder)))


def _sealer():
    """Fernet under SECRET_KEY's derived key, opening with SECRET_KEY_FALLBACKS' too."""
    keys = [settings.SECRET_KEY, *settings.SECRET_KEY_FALLBACKS]
    derived = (salted_hmac("lockstep.idempotency.sealed", "", secret=key, algorithm="sha256").digest() for key in keys)
    return MultiFernet([Fernet(base64.urlsafe_b64encode(key)) for key in derived])


def _stored(data, sealed):
    """The answer as the record keeps it: plain JSON, each ``sealed`` field encrypted."""
    body = _as_json(data)
    if sealed and isinstance(body, dict):
        sealer = _sealer()
        for name in sealed:
            if isinstance(body.get(name), str):
                body[name] = {"sealed": sealer.encrypt(body[name].encode()).decode()}
    return body


def _opened(body):
    """The stored answer with every sealed field decrypted (null where its key is gone)."""
    items = body.items() if isinstance(body, dict) else ()
    sealed = [name for name, value in items if isinstance(value, dict) and set(value) == {"sealed"}]
    if not sealed:
        return body
    sealer, body = _sealer(), dict(body)
    for name in sealed:
        try:
            body[name] = sealer.decrypt(body[name]["sealed"].encode()).decode()
        except InvalidToken:
            body[name] = None
    return body


def _replay(record):
    return Response(
        _opened(record.response_body), status=record.response_status, headers={"Idempotent-Replayed": "true"}
    )


# Answers given before the endpoint acted: the request itself was refused (a body that does not parse, a
# field that does not validate). Stripe keeps no result for such a request, so the same key with the
# corrected body goes through; keeping it would answer that retry 422 idempotency_key_reused for 24 h.
NOT_ACTED = {"malformed_request", "invalid_input"}


def _error_code(response):
    error = response.data.get("error") if isinstance(response.data, dict) else None
    return error.get("code") if isinstance(error, dict) else None


def _storable(response):
    """Whether the answer is kept under its key: not a failure to retry (5xx, or anything with Retry-After: a lock
    busy, a rate limit) and not a request refused before the endpoint acted (NOT_ACTED)."""
    if response.status_code >= 500 or response.has_header("Retry-After"):
        return False
    return _error_code(response) not in NOT_ACTED


def note_work(request, work_id):
    """Note ``work_id`` (the row the request's work made or changed) on its two-phase Idempotency-Key claim,
    inside the transaction that commits that work; without such a claim (no key, a one-phase one): nothing."""
    record = getattr(request, CLAIM_ATTR, None)
    if record is not None:
        IdempotencyKey.objects.note_work(record, work_id)


def _run(view, handler, request, args, kwargs):
    """Run the handler; turn a handled exception into its Response, re-raise bugs."""
    try:
        with transaction.atomic():  # a savepoint, so a failed handler leaves the claim usable
            return handler(view, request, *args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any failure is answered (DRF's handler) and its key released
        return view.handle_exception(exc)


def idempotent(two_phase=False, sealed=()):
    def decorator(handler):
        @wraps(handler)
        def wrapper(view, request, *args, **kwargs):
            key = request.headers.get(HEADER)
            if key is None:
                return handler(view, request, *args, **kwargs)
            if not _valid_key(key):
                raise IdempotencyKeyInvalid()
            claim = dict(
                principal=_principal(request),
                key=key,
                method=request.method,
                path=_stored_path(request.path),
                fingerprint=_fingerprint(request),
            )
            if two_phase:
                return _two_phase(view, handler, request, args, kwargs, claim, sealed)
            with database_refusals(), transaction.atomic():
                record, replay = IdempotencyKey.objects.claim(**claim)
                if replay:
                    return _replay(record)
                response = _run(view, handler, request, args, kwargs)
                if _storable(response):
                    body = _stored(response.data, sealed)
                    IdempotencyKey.objects.complete(record, status=response.status_code, body=body)
                else:
                    transaction.set_rollback(True)
                return response

        wrapper.honours_idempotency_key = True  # the schema declares the header (core.api.schema)
        return wrapper

    return decorator


def _two_phase(view, handler, request, args, kwargs, claim, sealed):
    with database_refusals(), transaction.atomic():
        record, replay = IdempotencyKey.objects.claim(**claim)
    if replay:
        return _replay(record)
    setattr(request, CLAIM_ATTR, record)
    try:
        response = None
        if record.work_id is not None:  # taken over from an attempt that committed its work, then died or failed
            response = view.resume(request, record.work_id, *args, **kwargs)  # None: that work was undone since
        if response is None:
            response = handler(view, request, *args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the key is freed whatever failed, then it is re-raised
        try:
            response = view.handle_exception(exc)
        except Exception:
            _free(record)
            raise
    with transaction.atomic():
        if _storable(response):
            IdempotencyKey.objects.complete(record, status=response.status_code, body=_stored(response.data, sealed))
        else:
            _free(record)
    return response


def _free(record):
    """An answer not kept: the key is free for a retry, which resumes the work noted on it (if any) rather
    than do it again: a hold committed before the provider call failed or a later lock timed out."""
    if record.work_id is not None:
        IdempotencyKey.objects.keep_for_resume(record)
    else:
        IdempotencyKey.objects.release(record)
