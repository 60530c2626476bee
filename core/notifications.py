"""E-mails owed for events, written in the recipient's language and sent by the worker.

An app registers what each kind of notification says (``register``) and, in the transaction
of the event, records one with ``Notification.objects.owe`` (core/models.py). The worker's
``send_notification`` job (core/tasks.py) claims it, renders it and hands it to Django's
e-mail backend (console by default, SMTP from the environment: docs/operations.md).
"""

import logging
from dataclasses import dataclass
from email.utils import parseaddr

from django.conf import settings
from django.core.mail import EmailMessage
from django.utils import translation

from core.exceptions import DatabaseUnavailable, LockContended
from core.metrics import CountsAtScrape
from core.models import SENDING_LEFT_AFTER, Notification

logger = logging.getLogger("lockstep.worker")


@dataclass(frozen=True)
class Message:
    subject: str  # gettext_lazy strings with %(name)s fields from the notification's context
    body: str


MESSAGES = {}

# A mail server that refuses is asked again 5 times, after 4 s, 16 s, 64 s, 256 s and 1024 s (core/tasks.py), then
# given up on: 6 attempts, counted on the notification's own row (``attempts``, raised at each claim), so a run
# that never reached the mail server (its row busy at the claim) does not use one up.
NOTIFICATION_RETRIES = 5


class MailRefused(Exception):
    """The mail server refused a notification: back to ``pending`` for the job's retry, or, ``final``, after
    its last attempt, left ``failed`` (its job fails with it)."""

    def __init__(self, message, *, final):
        super().__init__(message)
        self.final = final


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


def message_id(notification):
    """The notification's own Message-ID, the same on every attempt to send it.

    A mail server that accepted the message but whose answer was lost (a timeout after the data went out)
    looks like a refusal here, and the retry sends it again: under the same Message-ID, which mail
    systems use to drop the copy. Its time of making keeps it unique where ids repeat (a restored database).
    """
    domain = parseaddr(settings.DEFAULT_FROM_EMAIL)[1].rpartition("@")[2] or "lockstep.invalid"
    return f"<lockstep.notification.{notification.pk}.{notification.created_at.timestamp():.6f}@{domain}>"


def send(notification_id):
    """Send one owed notification at most once; return whether this call sent it.

    Claimed (committed) before the mail server is called; a refusal from the server puts it
    back to ``pending`` and raises ``MailRefused``, so the job's retry tries again (under the same
    Message-ID: a message the server took before its answer was lost is dropped as a copy); after the
    last retry (its ``NOTIFICATION_RETRIES + 1``-th claim) it is left ``failed``. A row busy at
    the claim raises ``LockContended``: nothing was attempted, and no attempt is counted.
    """
    notification = Notification.objects.claim(notification_id)
    if notification is None:
        return False  # sent, being sent, or given up on by another attempt
    try:
        subject, body = render(notification)
        headers = {"Message-ID": message_id(notification)}
        EmailMessage(subject, body, settings.DEFAULT_FROM_EMAIL, notification.recipients, headers=headers).send()
    except Exception as error:  # any refusal from the backend: recorded, then the job retries
        final = notification.attempts > NOTIFICATION_RETRIES
        try:
            Notification.objects.release(notification_id, error=f"{type(error).__name__}: {error}", final=final)
        except (LockContended, DatabaseUnavailable):  # the row stays `sending`, as after a worker's death: said
            logger.error(
                "notification %s left sending: refused (%s), its row busy or the database away", notification_id, error
            )
            raise
        raise MailRefused(f"notification {notification_id}: {type(error).__name__}: {error}", final=final) from error
    Notification.objects.mark_sent(notification_id)
    return True


# A worker that died between a notification's claim and the mail server's answer leaves it `sending`, and nothing
# sends it (the claim is at most once): an operator reads the mail log, then *Send again* (core.metrics.AT_SCRAPE).
LEFT_SENDING = CountsAtScrape(
    "lockstep_notifications_left_sending",
    "Notifications claimed for sending longer ago than SENDING_LEFT_AFTER (core_notification, now): their worker "
    "died before the mail server answered; check the mail log, then Send again in the admin.",
    (),
    f"SELECT count(*) FROM {Notification._meta.db_table} WHERE status = 'sending' "  # noqa: S608 - names from _meta
    f"AND claimed_at < clock_timestamp() - interval '{int(SENDING_LEFT_AFTER.total_seconds())} seconds'",
    always=[()],
)
