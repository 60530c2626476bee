"""The sandbox provider's hosted checkout page: each button sends the signed event Stripe would.

An open session offers **Pay** (``completed``, ``paid``), **Pay later** (a delayed
method such as a bank transfer: ``completed``, ``unpaid``) and **Cancel** (``expired``);
a session whose delayed payment is processing offers **Payment arrives**
(``async_payment_succeeded``) and **Payment fails** (``async_payment_failed``).

The buttons POST here (a same-origin form with a CSRF token); the event is built,
signed with PAYMENT_WEBHOOK_SECRET and handed to the same verify-and-process
function the webhook endpoint uses, in-process, so a single-threaded dev server
never has to call itself. Only the buttons the checkout's state offers act (Stripe takes
no payment on an expired or completed session), and the page exists only where the
sandbox may take payments (it is the provider, or PAYMENT_SANDBOX_ALLOWED): a pay link
e-mailed by a sandbox that was since replaced by Stripe confirms nothing.
"""

from django.conf import settings
from django.http import Http404
from django.shortcuts import render
from django.utils.translation import gettext_lazy as _
from django.views.decorators.http import require_GET, require_POST

from bookings.models import Checkout
from bookings.payments import configured_name
from bookings.payments.sandbox import ASYNC_FAILED, ASYNC_SUCCEEDED, CHECKOUT_ID, COMPLETED, EXPIRED
from bookings.services import sandbox_deliver
from core.exceptions import DomainError

# action -> (event type, payment_status)
ACTIONS = {
    "pay": (COMPLETED, "paid"),
    "pay_later": (COMPLETED, "unpaid"),
    "succeed": (ASYNC_SUCCEEDED, "paid"),
    "fail": (ASYNC_FAILED, "unpaid"),
    "cancel": (EXPIRED, "unpaid"),
}
# checkout state -> the buttons the page offers, in order: (action, label)
BUTTONS = {
    Checkout.State.OPEN: [("pay", _("Pay")), ("pay_later", _("Pay later (bank transfer)")), ("cancel", _("Cancel"))],
    Checkout.State.PROCESSING: [("succeed", _("Payment arrives")), ("fail", _("Payment fails"))],
}


def _page(request, checkout, *, status=200, **context):
    buttons = BUTTONS.get(checkout.state, [])
    return render(
        request, "bookings/sandbox_checkout.html", {"checkout": checkout, "buttons": buttons, **context}, status=status
    )


def _checkout(checkout_id):
    if not (settings.PAYMENT_SANDBOX_ALLOWED or configured_name() == "sandbox"):
        raise Http404("No such sandbox checkout.")
    if not CHECKOUT_ID.fullmatch(checkout_id):  # never sent to the database (a NUL was a 500)
        raise Http404("No such sandbox checkout.")
    checkout = (
        Checkout.objects.select_related("booking__package", "booking__tenant")
        .filter(provider_checkout_id=checkout_id, provider_checkout_id__startswith="cs_sandbox_")
        .first()
    )
    if checkout is None:
        raise Http404("No such sandbox checkout.")
    return checkout


@require_GET
def checkout_page(request, checkout_id):
    return _page(request, _checkout(checkout_id), result=None)


@require_POST
def checkout_action(request, checkout_id, action):
    if action not in ACTIONS:
        raise Http404("No such action.")
    checkout = _checkout(checkout_id)
    if action not in dict(BUTTONS.get(checkout.state, ())):  # a page left open, or a forged POST
        error = _("This checkout no longer offers that: nothing was sent.")
        return _page(request, checkout, status=409, result=None, error=error, action=action)
    try:
        event_type, payment_status = ACTIONS[action]
        result, error, status = sandbox_deliver(checkout, event_type, payment_status=payment_status), None, 200
    except DomainError as exc:  # e.g. resource_locked: show it and let the customer press again, not a 500
        result, error, status = None, exc.render(), exc.status_code
    return _page(request, _checkout(checkout_id), status=status, result=result, error=error, action=action)
