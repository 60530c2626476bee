"""E-mails owed for events, written in the recipient's language and sent by the worker.

An app registers what each kind of notification says (``register``) and, in the transaction
of the event, records one with ``Notification.objects.owe`` (core/models.py). The worker's
``send_notification`` job (core/tasks.py) claims it, renders it and hands it to Django's
e-mail backend (console by default, SMTP from the environment: docs/operations.md).
"""

from dataclasses import dataclass

from django.conf import settings
from django.core.mail import send_mail
from django.utils import translation

from core.models import Notification


@dataclass(frozen=True)
class Message:
    subject: str  # gettext_lazy strings with %(name)s fields from the notification's context
    body: str


MESSAGES = {}

# A mail server that refuses is asked again after 4 s, 16 s, 64 s, 256 s, 1024 s (core/tasks.py), then given up on:
# counted on the notification's own row (``attempts``, raised at each claim), so a retry that never reached
# the mail server (its row busy at the claim) does not use one up.
NOTIFICATION_RETRIES = 5


class GivenUp(Exception):
    """The mail server refused a notification's last attempt: it is left ``failed`` and its job fails."""


# The languages a customer can be written to in (settings.LANGUAGES); anything else gets the default.
LANGUAGES = {code for code, _name in settings.LANGUAGES}


def register(kind, *, subject, body):
    MESSAGES[kind] = Message(subject, body)


def customer_language(language):
    """The language to write in: a supported one, else the site's default."""
    language = (language or "").split("-")[0].lower()
    return language if language in LANGUAGES else settings.LANGUAGE_CODE


def render(notification):
    """(subject, body) of a notification in its own language."""
    message = MESSAGES[notification.kind]
    with translation.override(notification.language):
        return str(message.subject) % notification.context, str(message.body) % notification.context


def send(notification_id):
    """Send one owed notification at most once; return whether this call sent it.

    Claimed (committed) before the mail server is called; a refusal from the server puts it
    back to ``pending`` and raises, so the job's retry tries again; the last one (its
    ``NOTIFICATION_RETRIES``-th claim) leaves it ``failed`` and raises ``GivenUp``. A row busy
    at the claim raises ``LockContended``: nothing was attempted, and no attempt is counted.
    """
    notification = Notification.objects.claim(notification_id)
    if notification is None:
        return False  # sent, being sent, or given up on by another attempt
    try:
        subject, body = render(notification)
        send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, notification.recipients)
    except Exception as error:  # any refusal from the backend: recorded, then the job retries
        final = notification.attempts >= NOTIFICATION_RETRIES
        Notification.objects.release(notification_id, error=f"{type(error).__name__}: {error}", final=final)
        if final:
            raise GivenUp(f"notification {notification_id}: {type(error).__name__}: {error}") from error
        raise
    Notification.objects.mark_sent(notification_id)
    return True
