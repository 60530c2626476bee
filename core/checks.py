"""System checks that keep a production deployment from running with development values.

With DEBUG off, ``manage.py check --deploy`` fails on each of them (lockstep.E00x),
every other command that runs checks (``migrate`` in ``make serve``, ``runserver``,
the cron commands) warns (lockstep.W00x), and the served app refuses to start
(``config/wsgi.py`` calls ``refuse_unsafe_production``).

- E001 the public development SECRET_KEY (anyone could forge sessions);
- E002 the public development PAYMENT_WEBHOOK_SECRET (anyone could sign "paid" events);
- E003 the sandbox payment provider, whose "Pay" page confirms bookings without money,
  unless PAYMENT_SANDBOX_ALLOWED is set (a staging site);
- E004 the Stripe provider without STRIPE_API_KEY (every checkout would fail).
"""

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register
from django.core.exceptions import ImproperlyConfigured

DEVELOPMENT_SECRET_KEY_PREFIX = "lockstep-insecure-"

PROBLEMS = {
    "001": (
        "DEBUG is off but SECRET_KEY is the public development key.",
        "Set SECRET_KEY to a long random value (anyone could forge sessions and reset links with this one).",
    ),
    "002": (
        "DEBUG is off but PAYMENT_WEBHOOK_SECRET is the public development secret.",
        "Set PAYMENT_WEBHOOK_SECRET to the provider's signing secret (whsec_…): anyone could sign a payment.",
    ),
    "003": (
        "DEBUG is off and the sandbox payment provider is configured: its Pay page confirms bookings unpaid.",
        "Set STRIPE_API_KEY (or PAYMENT_PROVIDER), or PAYMENT_SANDBOX_ALLOWED=true for a staging site.",
    ),
    "004": (
        "The Stripe payment provider is configured without STRIPE_API_KEY.",
        "Set STRIPE_API_KEY to the account's secret key.",
    ),
}


def _payment_provider():
    return settings.PAYMENT_PROVIDER or ("stripe" if settings.STRIPE_API_KEY else "sandbox")


def production_problems():
    """The numbers of the PROBLEMS this configuration has (none while DEBUG is on)."""
    if settings.DEBUG:
        return []
    found = []
    if settings.SECRET_KEY.startswith(DEVELOPMENT_SECRET_KEY_PREFIX):
        found.append("001")
    if settings.PAYMENT_WEBHOOK_SECRET == settings.DEVELOPMENT_WEBHOOK_SECRET:
        found.append("002")
    provider = _payment_provider()
    if provider == "sandbox" and not settings.PAYMENT_SANDBOX_ALLOWED:
        found.append("003")
    if provider == "stripe" and not settings.STRIPE_API_KEY:
        found.append("004")
    return found


@register(Tags.security)
def warn_development_values(app_configs, **kwargs):
    return [Warning(PROBLEMS[n][0], hint=PROBLEMS[n][1], id=f"lockstep.W{n}") for n in production_problems()]


@register(Tags.security, deploy=True)
def refuse_development_values(app_configs, **kwargs):
    return [Error(PROBLEMS[n][0], hint=PROBLEMS[n][1], id=f"lockstep.E{n}") for n in production_problems()]


def refuse_unsafe_production():
    """Called by the served app at startup: refuse to serve with any of the problems above."""
    found = production_problems()
    if found:
        lines = [f"lockstep.E{n}: {PROBLEMS[n][0]} {PROBLEMS[n][1]}" for n in found]
        raise ImproperlyConfigured("Refusing to serve:\n" + "\n".join(lines))


@register(Tags.database, deploy=True)
def refuse_missing_timeouts(app_configs, databases=None, **kwargs):
    """lockstep.E010: the lock, statement or idle timeouts in effect in a transaction are not the settings.

    What a pooler that drops startup options leaves without DATABASE_POOL_MODE=transaction: lock
    waits without end. Run with ``check --deploy --database default`` (it connects).
    """
    if not databases:
        return []
    from core.db_backend.base import TIMEOUTS
    from core.health import readiness

    errors = []
    for alias in databases:
        checks = readiness(alias)
        if not checks["database"]["ok"]:
            errors.append(Error(f"Database {alias!r} unreachable: timeouts not verified.", id="lockstep.E010"))
            continue
        for name in TIMEOUTS:
            seen = checks[name]
            if not seen["ok"]:
                errors.append(
                    Error(
                        f"{name} in effect on database {alias!r} is {seen['effective_ms']} ms, "
                        f"configured {seen['configured_ms']} ms.",
                        hint="Behind PgBouncer in transaction mode set DATABASE_POOL_MODE=transaction "
                        "(the timeouts are then set in every transaction).",
                        id="lockstep.E010",
                    )
                )
    return errors
