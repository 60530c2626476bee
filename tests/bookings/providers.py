"""Test payment providers, chosen with settings.PAYMENT_PROVIDER = "tests.bookings.providers.<Name>"."""

import threading
import time

from django.core.mail.backends.base import BaseEmailBackend

from bookings.payments import ProviderError
from bookings.payments.sandbox import SandboxProvider


class RecordingProvider(SandboxProvider):
    """The sandbox provider, counting calls (class-level, shared by every instance and thread)."""

    name = "recording"
    checkouts = []
    refunds = []
    keys = []
    lookups = []
    expired = []
    got = []
    lock = threading.Lock()

    @classmethod
    def reset(cls):
        cls.checkouts, cls.refunds, cls.keys, cls.lookups, cls.expired, cls.got = [], [], [], [], [], []

    def create_checkout(self, booking, checkout):
        with self.lock:
            self.checkouts.append(booking.pk)
        return super().create_checkout(booking, checkout)

    def refund(self, checkout, *, idempotency_key):
        with self.lock:
            self.refunds.append(checkout.booking_id)
            self.keys.append(idempotency_key)
        return super().refund(checkout, idempotency_key=idempotency_key)

    def find_refund(self, checkout):
        with self.lock:
            self.lookups.append(checkout.booking_id)
        return super().find_refund(checkout)

    def get_refund(self, checkout):
        with self.lock:
            self.got.append(checkout.booking_id)
        return super().get_refund(checkout)

    def expire_checkout(self, checkout):
        with self.lock:
            self.expired.append(checkout.booking_id)
        return super().expire_checkout(checkout)


class SlowProvider(SandboxProvider):
    """create_checkout blocks 2 s for dates in ``slow_dates``; ``entered`` is set when it starts blocking."""

    name = "slow"
    slow_dates = set()
    entered = threading.Event()

    def create_checkout(self, booking, checkout):
        if booking.date in self.slow_dates:
            self.entered.set()
            time.sleep(2)
        return super().create_checkout(booking, checkout)


class DownProvider(SandboxProvider):
    """The provider is unreachable."""

    name = "down"

    def create_checkout(self, booking, checkout):
        raise ProviderError("connection refused")


class RefundDownProvider(SandboxProvider):
    """Checkouts work, refunds fail."""

    name = "refund-down"

    def refund(self, checkout, *, idempotency_key):
        raise ProviderError("refunds are down")


class CrashingRefundProvider(SandboxProvider):
    """The process dies inside the refund call (not a ProviderError: nothing gets recorded)."""

    name = "crashing-refund"

    def refund(self, checkout, *, idempotency_key):
        raise RuntimeError("process died mid-refund")


class LostAnswerRefundProvider(RecordingProvider):
    """The refund is made, but its answer is lost on the way back (a timeout after the provider acted)."""

    name = "lost-answer"

    def refund(self, checkout, *, idempotency_key):
        super().refund(checkout, idempotency_key=idempotency_key)
        raise ProviderError("read timed out")


class DecliningRefundProvider(RecordingProvider):
    """Declines the next ``declines`` refunds with an error it answered (Stripe: ``balance_insufficient``), which,
    like Stripe, it keeps under the request's idempotency key and replays to every retry with that key."""

    name = "declining"
    declines = 0

    def refuse_refund(self, checkout):
        if DecliningRefundProvider.declines:
            DecliningRefundProvider.declines -= 1
            raise ProviderError("balance_insufficient: the account's balance cannot cover the refund", answered=True)
        super().refuse_refund(checkout)


class ExpireDownProvider(RecordingProvider):
    """Sessions cannot be expired (the provider is unreachable for that call)."""

    name = "expire-down"

    def expire_checkout(self, checkout):
        raise ProviderError("connection reset")


class RefusingEmailBackend(BaseEmailBackend):
    """A mail server that refuses every message (settings.EMAIL_BACKEND in a test)."""

    def send_messages(self, email_messages):
        raise ConnectionRefusedError("no SMTP")


class LostAnswerEmailBackend(BaseEmailBackend):
    """A mail server that takes the first message, then its answer is lost (a timeout after the data went out);
    later messages are taken and answered. What it took is in ``taken`` (class-level)."""

    taken = []

    def send_messages(self, email_messages):
        LostAnswerEmailBackend.taken.extend(email_messages)
        if len(LostAnswerEmailBackend.taken) == 1:
            raise TimeoutError("timed out waiting for the answer to the end of the data")
        return len(email_messages)


class InterruptedProvider(RecordingProvider):
    """While create_checkout waits on the provider, ``meanwhile()`` runs (another path's work, committed)."""

    name = "interrupted"
    meanwhile = None

    def create_checkout(self, booking, checkout):
        created = super().create_checkout(booking, checkout)
        if self.meanwhile is not None:
            type(self).meanwhile()
        return created


class PendingRefundProvider(RecordingProvider):
    """Refunds are accepted and settle later (Stripe: ``pending``), by their ``refund.updated`` event."""

    name = "pending-refund"
    refund_status = "pending"


class SlowerThanTheHoldProvider(RecordingProvider):
    """The provider answers only after the hold has ended (its hold lapses while the call is out)."""

    name = "slower-than-the-hold"

    def create_checkout(self, booking, checkout):
        from datetime import timedelta

        from django.db.models.functions import Now

        from bookings.models import Booking

        Booking.objects.filter(pk=booking.pk).update(hold_expires_at=Now() - timedelta(seconds=1))
        return super().create_checkout(booking, checkout)


class SameSessionProvider(RecordingProvider):
    """Stripe under one idempotency key (``lockstep-checkout-<id>``): every create_checkout for a checkout answers
    the session the first one made; ``refuse_next`` (a ProviderError) makes the next call fail with it."""

    name = "same-session"
    made = {}
    refuse_next = None
    # what Stripe answers a request overlapping another one under the same key (409, nothing saved under it)
    IN_PROGRESS = ProviderError(
        "Keys for idempotent requests can only be used by one request at a time", answered=True, in_progress=True
    )
    UNREACHABLE = ProviderError("connection reset")

    @classmethod
    def reset(cls):
        super().reset()
        cls.made, cls.refuse_next = {}, None

    def create_checkout(self, booking, checkout):
        refusal, type(self).refuse_next = type(self).refuse_next, None
        if refusal is not None:
            raise refusal
        with self.lock:
            if checkout.pk in self.made:
                return self.made[checkout.pk]
        created = super().create_checkout(booking, checkout)
        with self.lock:
            return self.made.setdefault(checkout.pk, created)
