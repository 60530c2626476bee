"""Lockstep settings: one file, every deployment knob read from the environment."""

import re
from datetime import timedelta
from pathlib import Path
from urllib.parse import unquote

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)  # optional local overrides

DEBUG = env.bool("DEBUG", default=True)
# With DEBUG off, this public key fails `check --deploy` and warns everywhere else (core/checks.py).
SECRET_KEY = env.str("SECRET_KEY", default="lockstep-insecure-development-key-change-me-in-production")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "pgtrigger",
    "pghistory",  # the history of every guarded row (core/history.py)
    # the job queue: tables in this database, jobs enqueued inside the transaction that causes them
    "procrastinate.contrib.django",
    "core",
    "bookings",
    "proposals",
    "promos",
    "profiles",
]

MIDDLEWARE = [
    # first: request id and log fields for everything below, latency of the whole stack (core/observability.py)
    "core.observability.ObservabilityMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",  # static files under gunicorn (collected by make serve)
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "core.middleware.LazyMessageMiddleware",  # Django's, its storage built only when a request uses it
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # who and which URL, on the history of every row a write request changes (core/history.py)
    "core.history.HistoryMiddleware",
]
# Reads change nothing: no history context (and no per-statement set_config) for them.
PGHISTORY_MIDDLEWARE_METHODS = ("POST", "PUT", "PATCH", "DELETE")

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------
# DATABASE_URL set: use that server and never touch the embedded one.
# DATABASE_URL unset: start (or reuse) the private PostgreSQL under var/.
EMBEDDED_DATABASE = not env.str("DATABASE_URL", default="")
if not EMBEDDED_DATABASE:
    _database = env.db("DATABASE_URL")
    # A Unix-socket directory may be given percent-encoded as the host: postgres://u@%2Frun%2Fpostgresql/db
    _database["HOST"] = unquote(_database.get("HOST") or "")
else:
    from config.embedded_db import embedded_database

    _database = embedded_database(BASE_DIR / "var")

# Every transaction runs with these limits, so a lock wait or a runaway query can
# never hang a worker. They are startup parameters of each connection, so a pooled
# connection always carries them; guarded operations tighten them per transaction
# with SET LOCAL, which ends with the transaction and cannot leak.
LOCK_TIMEOUT_MS = env.int("LOCK_TIMEOUT_MS", default=2000)
STATEMENT_TIMEOUT_MS = env.int("STATEMENT_TIMEOUT_MS", default=15000)
# A transaction left open by a crashed or stuck worker would hold its row and advisory locks
# forever; PostgreSQL ends such a session after this long idle inside a transaction.
IDLE_IN_TRANSACTION_TIMEOUT_MS = env.int("IDLE_IN_TRANSACTION_TIMEOUT_MS", default=60000)
_database.setdefault("OPTIONS", {})
# Our backend: Django's, re-applying the timeouts inside every transaction behind a pooler (core/db_backend).
_database["ENGINE"] = "core.db_backend"
# "transaction": behind PgBouncer in transaction mode. Startup parameters never reach the server there
# (and PgBouncer refuses an unknown one), a session SET would leak to the pooler's next client, and a
# server-side cursor cannot outlive its transaction: so the timeouts are set in each transaction
# instead, server-side cursors are off, and the worker polls instead of LISTEN (docs/operations.md).
DATABASE_POOL_MODE = env.str("DATABASE_POOL_MODE", default="")
if DATABASE_POOL_MODE not in ("", "transaction"):
    raise ImproperlyConfigured("DATABASE_POOL_MODE must be empty (direct) or 'transaction' (PgBouncer).")
_pooled = DATABASE_POOL_MODE == "transaction"
_database["TIMEOUTS_PER_TRANSACTION"] = _pooled
_database["DISABLE_SERVER_SIDE_CURSORS"] = _pooled
if not _pooled:
    _database["OPTIONS"]["options"] = " ".join(
        filter(
            None,
            [
                _database["OPTIONS"].get("options", ""),  # DATABASE_URL's own ?options= (search_path, ...) are kept
                f"-c lock_timeout={LOCK_TIMEOUT_MS} -c statement_timeout={STATEMENT_TIMEOUT_MS}"
                f" -c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_TIMEOUT_MS}",
            ],
        )
    )
_database["OPTIONS"].setdefault("connect_timeout", env.int("DATABASE_CONNECT_TIMEOUT", default=5))
_database["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=60)
_database["CONN_HEALTH_CHECKS"] = env.bool("CONN_HEALTH_CHECKS", default=True)
_database.setdefault("TEST", {})
if env.str("TEST_DATABASE_NAME", default=""):
    _database["TEST"]["NAME"] = env.str("TEST_DATABASE_NAME")
DATABASES = {"default": _database}

# --- E-mail (notifications: bookings/notifications.py, sent by the worker) ---------------------
EMAIL_BACKEND = env.str("EMAIL_BACKEND", default="django.core.mail.backends.console.EmailBackend")
EMAIL_HOST = env.str("EMAIL_HOST", default="localhost")
EMAIL_PORT = env.int("EMAIL_PORT", default=25)
EMAIL_HOST_USER = env.str("EMAIL_HOST_USER", default="")
EMAIL_HOST_PASSWORD = env.str("EMAIL_HOST_PASSWORD", default="")
EMAIL_USE_TLS = env.bool("EMAIL_USE_TLS", default=False)
EMAIL_TIMEOUT = env.int("EMAIL_TIMEOUT", default=10)
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="Lockstep <bookings@localhost>")
# Who hears about a refund the provider refused REFUND_MAX_ATTEMPTS times (comma-separated).
OPERATOR_EMAILS = env.list("OPERATOR_EMAILS", default=[])

# --- The worker (procrastinate: a job queue on this PostgreSQL; core/tasks.py) ---------------
# Sweeps run every minute (crontab syntax; croniter's optional sixth field counts seconds).
SWEEP_SCHEDULE = env.str("SWEEP_SCHEDULE", default="* * * * *")
# /ready fails unless some worker's heartbeat is at most this old (procrastinate beats every 10 s).
WORKER_HEARTBEAT_MAX_AGE_S = env.int("WORKER_HEARTBEAT_MAX_AGE_S", default=60)
# A worker whose heartbeat is older than this is dead (killed, out of memory, its node lost): other workers
# forget it, and ``jobs.retry_stalled`` puts the jobs it was doing back in the queue, so a sweep whose lock it
# held runs again instead of never. Beats come three times per period.
WORKER_STALLED_AFTER_S = env.int("WORKER_STALLED_AFTER_S", default=30)
# Behind a transaction-mode pooler LISTEN/NOTIFY cannot work: the worker polls for jobs (every 5 s) instead.
# Jobs one worker runs at once (each in its own thread, on its own connection): a sweep waiting on the payment
# provider, or on a busy row until lock_timeout, never holds back the customers' e-mails or the other sweeps.
# The periodic jobs (core/tasks.py: five sweeps, remove_old, retry_stalled) run one at a time each, so 10
# leaves the e-mails at least three threads however slow every sweep is.
WORKER_CONCURRENCY = env.int("WORKER_CONCURRENCY", default=10)
PROCRASTINATE_WORKER_DEFAULTS = {
    "concurrency": WORKER_CONCURRENCY,
    "update_heartbeat_interval": max(1, WORKER_STALLED_AFTER_S // 3),
    "stalled_worker_timeout": WORKER_STALLED_AFTER_S,
    "listen_notify": not _pooled,
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Auth, i18n, static ---------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LANGUAGE_CODE = "en"
LANGUAGES = [("en", "English"), ("ar", "العربية")]
LOCALE_PATHS = []  # each app keeps its own catalog in <app>/locale
USE_I18N = True
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "var" / "static"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # WhiteNoise warns about a missing one until collectstatic runs

# --- API ------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "core.api.authentication.TokenAuthentication",  # "Token <key>" or "Bearer <key>"
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["core.api.renderers.SafeJSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["core.api.parsers.SafeJSONParser"],
    "DEFAULT_SCHEMA_CLASS": "core.api.schema.LockstepAutoSchema",
    "EXCEPTION_HANDLER": "core.api.errors.exception_handler",
    "DEFAULT_PAGINATION_CLASS": "core.api.inputs.StrictLimitOffsetPagination",
    "PAGE_SIZE": 50,
    "COERCE_DECIMAL_TO_STRING": True,
    # Reverse proxies in front that append to X-Forwarded-For: the client address the
    # throttles count by. 0 = REMOTE_ADDR (X-Forwarded-For ignored: a client could forge it).
    "NUM_PROXIES": env.int("NUM_PROXIES", default=0),
}
if env.bool("API_BROWSABLE", default=False):
    REST_FRAMEWORK["DEFAULT_RENDERER_CLASSES"].append("rest_framework.renderers.BrowsableAPIRenderer")

# Rate limits (core/api/throttles.py, docs/api.md "Rate limits"): "<N>/<second|minute|hour|day>",
# read per request. Empty (or THROTTLE_ENABLED=false) turns a scope off: it then costs nothing.
THROTTLE_ENABLED = env.bool("THROTTLE_ENABLED", default=True)
LOCKSTEP_THROTTLE_RATES = {
    # public checkouts per client address, and per customer e-mail
    "checkout_address": env.str("THROTTLE_CHECKOUT_ADDRESS", default="60/minute"),
    "checkout_email": env.str("THROTTLE_CHECKOUT_EMAIL", default="10/hour"),
    # failed token authentications per client address (then 429 instead of 401)
    "auth_failure": env.str("THROTTLE_AUTH_FAILURE", default="30/minute"),
    # every request under /api/t/<tenant>/ per user
    "tenant_api": env.str("THROTTLE_TENANT_API", default="6000/minute"),
}
for _scope, _rate in LOCKSTEP_THROTTLE_RATES.items():
    if _rate.strip() and not re.fullmatch(r"\s*[1-9][0-9]*/(s|sec|second|m|min|minute|h|hour|d|day)\s*", _rate):
        raise ImproperlyConfigured(f"THROTTLE_{_scope.upper()}={_rate!r}: expected e.g. 60/minute, or empty (off)")
    LOCKSTEP_THROTTLE_RATES[_scope] = _rate.strip() if THROTTLE_ENABLED and _rate.strip() else None

SPECTACULAR_SETTINGS = {
    "TITLE": "Lockstep API",
    "DESCRIPTION": "Bookings, assistant proposals, promo codes, redemption sessions and family trees, "
    "each guarded operation exactly once under any concurrency.",
    "VERSION": "1.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # Several models have a "status" field; give each choice set its own schema name.
    "ENUM_NAME_OVERRIDES": {
        "BookingStatusEnum": "bookings.models.Booking.Status",
        "ProposalStatusEnum": "proposals.models.Proposal.Status",
        "RedemptionSessionStatusEnum": "promos.models.RedemptionSession.Status",
    },
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "core.api.schema.finish_schema",
    ],
}

# --- Lockstep -------------------------------------------------------------
IDEMPOTENCY_KEY_TTL = timedelta(hours=env.int("IDEMPOTENCY_KEY_TTL_HOURS", default=24))
# An in-progress key older than this is taken as abandoned (its request crashed).
IDEMPOTENCY_IN_PROGRESS_TIMEOUT = timedelta(seconds=env.int("IDEMPOTENCY_IN_PROGRESS_TIMEOUT", default=300))
LOCK_RETRY_AFTER_SECONDS = env.int("LOCK_RETRY_AFTER_SECONDS", default=1)
BOOKING_HOLD_TTL = timedelta(minutes=env.int("BOOKING_HOLD_TTL_MINUTES", default=15))
# A checkout's Stripe session expires 32 minutes after its hold does (bookings/payments/stripe.py), and Stripe
# refuses one expiring more than 24 hours after it is made: a longer hold would make every checkout fail.
if not timedelta(minutes=1) <= BOOKING_HOLD_TTL <= timedelta(hours=23):
    raise ImproperlyConfigured(
        f"BOOKING_HOLD_TTL_MINUTES={BOOKING_HOLD_TTL.total_seconds() / 60:g}: expected 1 to 1380 (a payment "
        "session lasts the hold and 32 minutes more, and the provider takes at most 24 hours)"
    )
PAYMENT_PROVIDER = env.str("PAYMENT_PROVIDER", default="")  # "" = stripe when STRIPE_API_KEY is set, else sandbox
# A provider call's wait to connect, and its wait for each part of the answer (the Stripe library makes up to 3
# tries): a request still waiting for the provider when its Idempotency-Key's claim goes stale
# (IDEMPOTENCY_IN_PROGRESS_TIMEOUT) overlaps the retry that takes the claim over. Its 3 tries, each a connect and
# a read at worst, must end well within that claim.
PAYMENT_PROVIDER_TIMEOUT_SECONDS = env.int("PAYMENT_PROVIDER_TIMEOUT_SECONDS", default=20)
if not (
    PAYMENT_PROVIDER_TIMEOUT_SECONDS >= 1
    and PAYMENT_PROVIDER_TIMEOUT_SECONDS * 2 * 3 < IDEMPOTENCY_IN_PROGRESS_TIMEOUT.total_seconds()
):
    raise ImproperlyConfigured(
        f"PAYMENT_PROVIDER_TIMEOUT_SECONDS={PAYMENT_PROVIDER_TIMEOUT_SECONDS}: expected at least 1, and 3 tries of a "
        "connect and a read within IDEMPOTENCY_IN_PROGRESS_TIMEOUT "
        f"({IDEMPOTENCY_IN_PROGRESS_TIMEOUT.total_seconds():g} s)"
    )
DEVELOPMENT_WEBHOOK_SECRET = "whsec_lockstep_sandbox_secret"  # public: refused with DEBUG off (core/checks.py)
PAYMENT_WEBHOOK_SECRET = env.str("PAYMENT_WEBHOOK_SECRET", default=DEVELOPMENT_WEBHOOK_SECRET)
STRIPE_API_KEY = env.str("STRIPE_API_KEY", default="")
# The sandbox's "Pay" page confirms bookings without money: with DEBUG off it must be allowed explicitly.
PAYMENT_SANDBOX_ALLOWED = env.bool("PAYMENT_SANDBOX_ALLOWED", default=DEBUG)
PUBLIC_BASE_URL = env.str("PUBLIC_BASE_URL", default="http://127.0.0.1:8000")

if not DEBUG:
    SECURE_CONTENT_TYPE_NOSNIFF = True
    SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=True)
    CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=True)

# State machines and row versions are triggers (core/integrity.py), installed by migrations only.
PGTRIGGER_INSTALL_ON_MIGRATE = False
PGTRIGGER_MIGRATIONS = True

# One JSON object per line for a log shipper, or readable lines for a terminal; every record
# carries the request id and tenant of the request it was logged in (core/observability.py).
LOG_FORMAT = env.str("LOG_FORMAT", default="text" if DEBUG else "json")
if LOG_FORMAT not in ("json", "text"):
    raise ImproperlyConfigured(f"LOG_FORMAT={LOG_FORMAT!r}: expected json or text")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_context": {"()": "core.observability.RequestContextFilter"}},
    "formatters": {
        "json": {"()": "core.observability.JSONFormatter"},
        "text": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s %(tenant)s] %(message)s"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "filters": ["request_context"], "formatter": LOG_FORMAT},
    },
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="WARNING")},
    # Refusals (4xx) are answers, not incidents: django.request logs only server errors; each
    # refused API request is one INFO line of lockstep.refusals (shown with LOG_LEVEL=INFO).
    "loggers": {"django.request": {"level": "ERROR"}},
}
DEMO_ADMIN_PASSWORD = env.str("DEMO_ADMIN_PASSWORD", default="lockstep-demo")

# --- Observability ----------------------------------------------------------
# GET /metrics (core/metrics.py) answers only "Authorization: Bearer <METRICS_TOKEN>" when set;
# empty leaves it open (block it at the proxy instead). Under gunicorn the metrics of all
# workers are summed through the files in PROMETHEUS_MULTIPROC_DIR (config/gunicorn.py).
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
