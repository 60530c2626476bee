"""Payment providers for the proposals' interleaving tests (PAYMENT_PROVIDER = "tests.proposals.providers.<Name>")."""

import threading

from bookings.payments import ProviderError
from bookings.payments.sandbox import SandboxProvider


class GatedFailingProvider(SandboxProvider):
    """The first checkout blocks until ``gate`` is set, then fails (a provider slower than the hold, then down);
    every later checkout succeeds. ``entered`` is set when the first one starts blocking."""

    name = "gated-failing"
    lock = threading.Lock()
    calls = 0
    entered = threading.Event()
    gate = threading.Event()

    @classmethod
    def reset(cls):
        cls.calls, cls.entered, cls.gate = 0, threading.Event(), threading.Event()

    def create_checkout(self, booking, checkout):
        with self.lock:
            type(self).calls += 1
            first = type(self).calls == 1
        if first:
            self.entered.set()
            assert self.gate.wait(20)
            raise ProviderError("timed out")
        return super().create_checkout(booking, checkout)


class DyingProvider(SandboxProvider):
    """The process dies inside create_checkout (not a ProviderError: nothing is recorded)."""

    name = "dying"

    def create_checkout(self, booking, checkout):
        raise RuntimeError("process died")
