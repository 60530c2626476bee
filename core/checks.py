"""System checks that keep a production deployment from running with development values.

``manage.py check --deploy`` fails (lockstep.E001); every other command that runs
checks (``migrate`` in ``make serve``, ``runserver``, the cron commands) warns
(lockstep.W001) without stopping.
"""

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register

DEVELOPMENT_SECRET_KEY_PREFIX = "lockstep-insecure-"
MESSAGE = "DEBUG is off but SECRET_KEY is the public development key."
HINT = "Set SECRET_KEY to a long random value (anyone could forge sessions and reset links with this one)."


def _development_key_in_production():
    return not settings.DEBUG and settings.SECRET_KEY.startswith(DEVELOPMENT_SECRET_KEY_PREFIX)


@register(Tags.security)
def warn_development_secret_key(app_configs, **kwargs):
    return [Warning(MESSAGE, hint=HINT, id="lockstep.W001")] if _development_key_in_production() else []


@register(Tags.security, deploy=True)
def refuse_development_secret_key(app_configs, **kwargs):
    return [Error(MESSAGE, hint=HINT, id="lockstep.E001")] if _development_key_in_production() else []
