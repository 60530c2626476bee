from decimal import Decimal

from django.utils.translation import gettext_lazy as _
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from bookings.models import BOOKING_RECORD, Booking, Checkout, Package
from core.api.inputs import (
    MAX_ID,
    MAX_VERSION,
    PRICE_PATTERN,
    CurrencyField,
    InCurrencyField,
    OnlyVersionRequired,
    PatternField,
    StrictDateField,
    StrictInput,
)


@extend_schema_field({"type": "string", "format": "decimal", "pattern": PRICE_PATTERN, "example": "450.00"})
class PriceField(PatternField):
    """A price as sent: a decimal string, 0 to 9999999999.999 (it fits DecimalField(13, 3)).

    The currency's own exponent is checked by the manager (400 ``amount_precision``: no
    cents in JPY), the currency's code too (400 ``unknown_currency``).
    """

    json_type = "string"

    def __init__(self, **kwargs):
        message = _("Enter a price such as 450.00: digits, at most three decimals, up to 9999999999.999.")
        super().__init__(PRICE_PATTERN, message, **kwargs)

    def to_internal_value(self, data):
        return Decimal(super().to_internal_value(data))


def price_input(**kwargs):
    return PriceField(**kwargs)


class PackageSerializer(serializers.ModelSerializer):
    """A package as staff see it (output); ``version`` is what an edit may carry back."""

    price = InCurrencyField("price")
    active = serializers.BooleanField(source="is_active", read_only=True)  # the published name

    class Meta:
        model = Package
        fields = ["id", "name", "price", "currency", "daily_capacity", "active", "version", "created_at"]
        read_only_fields = fields


class PackageCreateInputSerializer(StrictInput):
    """A new package. The defaults belong here, to create, and nowhere else."""

    name = serializers.CharField(max_length=200)
    price = price_input()
    currency = CurrencyField(default="USD")
    daily_capacity = serializers.IntegerField(min_value=1, max_value=100_000, default=1)
    active = serializers.BooleanField(source="is_active", default=True)


class PackageUpdateInputSerializer(StrictInput):
    """An edit: only the fields sent are written (no defaults, so PUT never resets an omitted field).

    PUT still needs ``name`` and ``price`` (as it always did). ``version`` is required, PUT and PATCH alike,
    and must be the package's current one (409 ``version_conflict``): an edit from a page or a cache read
    before a colleague's would write back what it read (a paused package active again, an old price).
    """

    name = serializers.CharField(max_length=200)
    price = price_input()
    currency = CurrencyField(required=False)
    daily_capacity = serializers.IntegerField(min_value=1, max_value=100_000, required=False)
    active = serializers.BooleanField(source="is_active", required=False)
    version = serializers.IntegerField(min_value=1, max_value=MAX_VERSION)


class PackagePatchInputSerializer(OnlyVersionRequired, PackageUpdateInputSerializer):
    """PATCH: the fields to change, and the version they were read at (required, as on PUT)."""


class PublicPackageSerializer(serializers.ModelSerializer):
    price = InCurrencyField("price")

    class Meta:
        model = Package
        fields = ["id", "name", "price", "currency", "daily_capacity"]


class CustomerSerializer(StrictInput):
    name = serializers.CharField(max_length=200)
    email = serializers.EmailField(max_length=254)


class CheckoutCreateInputSerializer(StrictInput):
    package = serializers.IntegerField(min_value=1, max_value=MAX_ID)
    date = StrictDateField()
    customer = CustomerSerializer()


class BookingSummarySerializer(serializers.ModelSerializer):
    class Meta:
        model = Booking
        fields = ["id", "status", "hold_expires_at"]


class CheckoutSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="provider_checkout_id")

    class Meta:
        model = Checkout
        fields = ["id", "url"]


class CheckoutCreatedSerializer(serializers.Serializer):
    booking = BookingSummarySerializer()
    checkout = CheckoutSerializer()


class AvailabilityQueryInputSerializer(StrictInput):
    start = StrictDateField()
    end = StrictDateField()
    package = serializers.IntegerField(min_value=1, max_value=MAX_ID, required=False)


class AvailabilitySerializer(serializers.Serializer):
    date = serializers.DateField()
    remaining = serializers.IntegerField()


class BookingCheckoutSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="provider_checkout_id")

    class Meta:
        model = Checkout
        fields = ["id", "url", "provider", "state", "refund_state", "provider_refund_id"]


class BookingSerializer(serializers.ModelSerializer):
    """A booking as staff see it."""

    checkout = serializers.SerializerMethodField()
    amount = InCurrencyField("amount")

    class Meta:
        model = Booking
        fields = ["id", "package", "date", "customer_name", "customer_email", *BOOKING_RECORD, "version", "checkout"]

    def get_checkout(self, booking) -> BookingCheckoutSerializer(allow_null=True):
        checkout = getattr(booking, "checkout", None)  # the reverse accessor raises an AttributeError subclass
        return BookingCheckoutSerializer(checkout).data if checkout else None


class BookingCancelInputSerializer(StrictInput):
    # The version the client showed its user: a booking paid (or otherwise moved) since is refused
    # version_conflict rather than cancelled as it now stands (a refund nobody was shown).
    version = serializers.IntegerField(min_value=1, max_value=MAX_VERSION, required=False)


class BookingListQueryInputSerializer(StrictInput):
    date = StrictDateField(required=False)
    status = serializers.ChoiceField(choices=Booking.Status.choices, required=False)
    package = serializers.IntegerField(min_value=1, max_value=MAX_ID, required=False)
