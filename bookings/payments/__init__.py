"""Payment providers behind one small interface, chosen by settings.PAYMENT_PROVIDER.

``""`` picks ``stripe`` when STRIPE_API_KEY is set, else ``sandbox``. A dotted path
(``"tests.bookings.providers.SlowProvider"``) names any other PaymentProvider class.
"""

from django.conf import settings
from django.utils.module_loading import import_string

from bookings.payments.base import PaymentProvider, ProviderCheckout, ProviderError, ProviderEvent, ProviderRefund

__all__ = [
    "PaymentProvider",
    "ProviderCheckout",
    "ProviderError",
    "ProviderEvent",
    "ProviderRefund",
    "get_provider",
    "provider_for",
]

BUILTIN = {
    "sandbox": "bookings.payments.sandbox.SandboxProvider",
    "stripe": "bookings.payments.stripe.StripeProvider",
}


def configured_name():
    return settings.PAYMENT_PROVIDER or ("stripe" if settings.STRIPE_API_KEY else "sandbox")


def get_provider(name=None) -> PaymentProvider:
    """Return an instance of the named (default: configured) provider."""
    name = name or configured_name()
    return import_string(BUILTIN.get(name, name))()


def provider_for(name) -> PaymentProvider:
    """The provider that created a checkout: a built-in by name, else the configured one."""
    return get_provider(name if name in BUILTIN else None)
