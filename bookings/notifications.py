"""What customers (and operators) are told about a booking, owed inside the transaction that changes it.

The customer is written to in the language they checked out in: recorded with the first
notice (the hold, owed during their own request), reused for every later one (a payment
webhook or a sweep has no customer language of its own).
"""

import hashlib
from datetime import UTC, datetime
from types import SimpleNamespace

from django.conf import settings
from django.db import connections
from django.db.models import CharField, F, OuterRef, Subquery, Value
from django.db.models.functions import Cast, Concat
from django.utils import translation
from django.utils.translation import gettext_lazy as _

from core.models import Notification
from core.money import from_minor_units, in_currency
from core.notifications import customer_language, register

(
    HELD,
    CONFIRMED,
    NOT_PLACED,
    PAYMENT_FAILED,
    CANCELLED,
    REFUNDED,
    REFUND_REVERSED,
    REFUND_GAVE_UP,
    REFUND_STUCK,
    DISPUTE_OPENED,
    DISPUTE_CLOSED,
) = (
    "booking_held",
    "booking_confirmed",
    "booking_not_placed",
    "booking_payment_failed",
    "booking_cancelled",
    "booking_refunded",
    "refund_reversed",
    "refund_gave_up",
    "refund_stuck",
    "dispute_opened",
    "dispute_closed",
)

# Each message: its subject and body, with the facts of _facts (and the kind's own extras).
MESSAGES = {
    HELD: (
        _("Your booking for %(package)s on %(date)s is held"),
        _(
            "Hello %(name)s,\n\nWe are holding %(package)s on %(date)s for you until %(hold_expires_at)s (UTC). "
            "Pay %(amount)s %(currency)s here to confirm it:\n%(pay_url)s\n\n"
            "If you do not pay by then, the date is released and nothing is charged."
        ),
    ),
    CONFIRMED: (
        _("Your booking for %(package)s on %(date)s is confirmed"),
        _("Hello %(name)s,\n\nYour payment was received: %(package)s on %(date)s is yours (booking #%(booking)s)."),
    ),
    NOT_PLACED: (
        _("Your booking for %(package)s on %(date)s could not be confirmed"),
        _(
            "Hello %(name)s,\n\nYour payment for booking #%(booking)s arrived, but %(package)s on %(date)s "
            "could no longer be kept for you: the date is no longer available. "
            "The %(amount)s %(currency)s you paid is being refunded: a separate e-mail follows when it is."
        ),
    ),
    PAYMENT_FAILED: (
        _("Your payment for %(package)s on %(date)s did not go through"),
        _(
            "Hello %(name)s,\n\nThe payment of %(amount)s %(currency)s for booking #%(booking)s (%(package)s on "
            "%(date)s) did not go through, so the date was released and nothing was charged. "
            "To have it, book again."
        ),
    ),
    CANCELLED: (
        _("Your booking for %(package)s on %(date)s is cancelled"),
        _(
            "Hello %(name)s,\n\nBooking #%(booking)s (%(package)s on %(date)s) is cancelled. "
            "If you had paid, the refund follows in a separate e-mail."
        ),
    ),
    REFUNDED: (
        _("Your refund for %(package)s on %(date)s"),
        _("Hello %(name)s,\n\n%(amount)s %(currency)s for booking #%(booking)s has been refunded to you."),
    ),
    REFUND_REVERSED: (
        _("Your refund for %(package)s on %(date)s did not go through"),
        _(
            "Hello %(name)s,\n\nThe refund of %(amount)s %(currency)s for booking #%(booking)s that we told you "
            "about was returned by the payment provider, so the money has not reached you. Our team has been "
            "told and will make the refund again; we will write to you when it has been made."
        ),
    ),
    REFUND_GAVE_UP: (
        _("Refund of booking #%(booking)s failed %(attempts)s times: act on it"),
        _(
            "The payment provider refused the refund of booking #%(booking)s (%(amount)s %(currency)s, "
            "%(email)s) %(attempts)s times; it is no longer retried by itself. Last error: %(error)s\n\n"
            "Admin: Bookings, filter by refund state, action 'Retry failed refunds now'."
        ),
    ),
    REFUND_STUCK: (
        _("Refund of booking #%(booking)s still not through: check it"),
        _(
            "The payment provider accepted the refund %(refund)s of booking #%(booking)s (%(amount)s "
            "%(currency)s, %(email)s), first asked for on %(requested)s (UTC), but has not settled it "
            "(Stripe: pending, or requires_action: the customer's bank or payment method needs an action). "
            "Lockstep keeps asking; check the refund in the payment provider's dashboard.\n\n"
            "Admin: Bookings, filter by refund state 'submitted'."
        ),
    ),
    DISPUTE_OPENED: (
        _("The payment of booking #%(booking)s is disputed: answer by %(due_by)s"),
        _(
            "The customer's bank disputes %(disputed)s %(currency)s of the payment for booking #%(booking)s "
            "(%(package)s on %(date)s, %(email)s); reason given: %(reason)s. The money is held back until "
            "the dispute is decided. Send the evidence from the payment provider's dashboard (dispute "
            "%(dispute)s) by %(due_by)s (UTC).\n\n"
            "Admin: Payment events, filter 'needs review'."
        ),
    ),
    DISPUTE_CLOSED: (
        _("The dispute of booking #%(booking)s is closed: %(outcome)s"),
        _(
            "The dispute %(dispute)s of the payment for booking #%(booking)s (%(package)s on %(date)s, "
            "%(disputed)s %(currency)s) is closed: %(outcome)s."
        ),
    ),
}
for kind, (subject, body) in MESSAGES.items():
    register(kind, subject=subject, body=body)


# The language recorded with the booking's first notice (the hold, owed during the customer's request).
_held_language = Notification.objects.filter(
    kind=HELD, subject=Concat(Value("booking:"), Cast(OuterRef("pk"), CharField()))
)[:1]


def facts_statement(manager, *, booking):
    """The statement of ``Booking.objects.notice_facts``: what a notice mentions of the booking ``booking``."""
    facts = manager.filter(pk=booking).order_by()
    return (
        facts.values(
            "pk",
            "customer_name",
            "customer_email",
            "date",
            "amount",
            "currency",
            package_name=F("package__name"),
            refund_attempts=F("checkout__refund_attempts"),
            refund_error=F("checkout__refund_error"),
            first_language=Subquery(_held_language.values("language")),
        )
        .query.get_compiler(manager.db)
        .as_sql()
    )


def about(booking_id, news, provider_id):
    """A notice's subject for news of one provider object of the booking: ``booking:12:refund:re_1``.

    Once per subject and kind (Notification's unique pair). A provider id is at most 255 characters
    (parse_event) and a subject 100: a long one is stood for by its digest, never cut (two ids
    sharing a prefix would share the notice, and the second be dropped).
    """
    provider_id = str(provider_id)
    if len(provider_id) > 40:
        provider_id = "sha256-" + hashlib.sha256(provider_id.encode()).hexdigest()[:33]
    return f"booking:{booking_id}:{news}:{provider_id}"


def _facts(booking_id):
    """What every message may mention, and the booking's facts the callers decide on, in one read."""
    from bookings.models import Booking

    with connections[Booking.objects.db].cursor() as cursor:
        cursor.execute(*Booking.objects.notice_facts.statement(Booking.objects, booking=booking_id))
        row = cursor.fetchone()
        if row is None:
            raise Booking.DoesNotExist(f"no booking with pk={booking_id!r}")
        return _told(dict(zip((column.name for column in cursor.description), row, strict=True)))


def _told(facts):
    """The facts (the columns of ``facts_statement``, by name) and what every message may mention of them."""

    facts = SimpleNamespace(**facts)
    return facts, {
        "booking": facts.pk,
        "name": facts.customer_name,
        "email": facts.customer_email,
        "package": facts.package_name,
        "date": facts.date.isoformat(),
        "amount": str(in_currency(facts.amount, facts.currency)),
        "currency": facts.currency,
    }


def owe_customer_notice(kind, booking_id, *, refund=None):
    """Record the customer's e-mail for this event of the booking, in the language of their first one.

    Once per booking and kind, or, for a refund's news, once per refund (the provider's id
    ``refund``): a refund that failed after the customer was told, then made again, is news twice.
    Call inside the transaction that changes the booking: one read, then its row and its job in one
    statement.
    """
    booking, context = _facts(booking_id)
    language = booking.first_language or settings.LANGUAGE_CODE
    subject = f"booking:{booking.pk}" if refund is None else about(booking.pk, "refund", refund)
    return Notification.objects.owe(
        kind, subject=subject, recipients=[booking.customer_email], language=language, context=context
    )


def take_back_refund_notice(booking_id, *, refund):
    """The provider failed the refund ``refund`` after it succeeded: withdraw the customer's "refunded" e-mail
    if it has not gone out (no retry of its job sends it after this), else tell them it did not go through.

    Locks: the notice's row (``Notification.objects.take_back``). Returns the reversal owed, or None.
    """
    was = Notification.objects.take_back(REFUNDED, subject=about(booking_id, "refund", refund))
    if was is None:  # recorded before refund news were keyed by refund: one per booking
        was = Notification.objects.take_back(REFUNDED, subject=f"booking:{booking_id}")
    if was in (Notification.Status.SENDING, Notification.Status.SENT):  # it may have reached them
        return owe_customer_notice(REFUND_REVERSED, booking_id, refund=refund)
    return None


def held_notice(booking, *, pay_url):
    """The customer's first e-mail, with the pay link and the hold's expiry: ``Notification.objects.owe``'s
    keywords, for the statement that opens the checkout (``Checkout.objects.open``).

    Told what the hold just made, in the customer's own request (``booking`` as ``Booking.objects.hold``
    returned it, with the package's name it read), in the language of that request: the one every later
    notice of the booking is written in.
    """
    facts, context = _told(
        {
            "pk": booking.pk,
            "customer_name": booking.customer_name,
            "customer_email": booking.customer_email,
            "package_name": booking.package_name,
            "date": booking.date,
            "amount": booking.amount,
            "currency": booking.currency,
        }
    )
    context |= {"pay_url": pay_url, "hold_expires_at": booking.hold_expires_at.strftime("%Y-%m-%d %H:%M")}
    return {
        "kind": HELD,
        "subject": f"booking:{booking.pk}",
        "recipients": [booking.customer_email],
        "language": customer_language(translation.get_language()),
        "context": context,
    }


def owe_operator_alert(booking_id, *, failed_refund=None):
    """Tell the operators (OPERATOR_EMAILS) that a refund was given up on; nothing to send without any.

    Once per give-up: after REFUND_MAX_ATTEMPTS refusals (by the attempt count), or when the
    provider failed the refund ``failed_refund`` (by its id: a booking's second failed refund
    is news, even at the same attempt count).
    """
    if not settings.OPERATOR_EMAILS:
        return None
    booking, context = _facts(booking_id)
    context |= {"attempts": booking.refund_attempts, "error": booking.refund_error or "-"}
    given_up = f"failed:{failed_refund}" if failed_refund else booking.refund_attempts
    return _owe_operators(REFUND_GAVE_UP, subject=about(booking_id, "refund", given_up), context=context)


def owe_stuck_refund_alert(booking_id, *, refund):
    """Tell the operators (OPERATOR_EMAILS) that the refund ``refund`` is still not settled; once per refund."""
    if not settings.OPERATOR_EMAILS:
        return None
    from bookings.models import Checkout

    booking, context = _facts(booking_id)
    requested = Checkout.objects.filter(booking_id=booking_id).values_list("refund_requested_at", flat=True).get()
    context |= {"refund": refund, "requested": requested.strftime("%Y-%m-%d %H:%M")}
    return _owe_operators(REFUND_STUCK, subject=about(booking_id, "stuck-refund", refund), context=context)


# What the operators read of a dispute's end, by its result (services._note_dispute).
DISPUTE_OUTCOMES = {
    "dispute_won": _("won, the money is returned to the account"),
    "dispute_lost": _("lost, the money went back to the customer"),
    "dispute_closed": _("closed without a decision (an inquiry or a warning)"),
}


def owe_dispute_alert(booking_id, event, *, result):
    """Tell the operators (OPERATOR_EMAILS) that a payment's dispute opened or closed; once per dispute and news."""
    if not settings.OPERATOR_EMAILS:
        return None

    booking, context = _facts(booking_id)
    context |= {
        "dispute": event.dispute_id,
        "reason": event.dispute_reason or "-",
        "disputed": str(in_currency(from_minor_units(event.amount_total, booking.currency), booking.currency)),
        "due_by": _utc(event.evidence_due_by),
    }
    if result == "dispute_opened":
        kind = DISPUTE_OPENED
    else:
        kind = DISPUTE_CLOSED
        with translation.override(settings.LANGUAGE_CODE):
            context["outcome"] = str(DISPUTE_OUTCOMES[result])
    return _owe_operators(kind, subject=about(booking_id, "dispute", event.dispute_id), context=context)


def _owe_operators(kind, *, subject, context):
    """An e-mail to every address of OPERATOR_EMAILS, in the site's language (the callers checked there are any)."""
    return Notification.objects.owe(
        kind,
        subject=subject,
        recipients=list(settings.OPERATOR_EMAILS),
        language=settings.LANGUAGE_CODE,
        context=context,
    )


def _utc(timestamp):
    """A Unix time as ``YYYY-MM-DD HH:MM``, or "-" when missing or out of range."""
    try:
        return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M")
    except (TypeError, ValueError, OverflowError, OSError):
        return "-"
