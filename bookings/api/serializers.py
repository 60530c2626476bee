from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from bookings.models import Booking, Checkout, Package, in_currency

MAX_PRICE = 10**10 - 1  # fits DecimalField(max_digits=13, decimal_places=3)


@extend_schema_field(
    {"type": "string", "format": "decimal", "pattern": r"^\d+(\.\d{1,3})?$", "example": "450.00", "readOnly": True}
)
class InCurrencyField(serializers.Field):
    """An amount written with its currency's decimals: "450.00" USD, "1500" JPY, "1.250" KWD (read only)."""

    def __init__(self, amount_attr, **kwargs):
        self.amount_attr = amount_attr
        super().__init__(source="*", read_only=True, **kwargs)

    def to_representation(self, obj):
        return str(in_currency(getattr(obj, self.amount_attr), obj.currency))


def price_input(**kwargs):
    """A price as sent: up to three decimals here; the currency's own exponent is checked by the manager
    (400 ``amount_precision``), the currency's code too (400 ``unknown_currency``)."""
    return serializers.DecimalField(max_digits=13, decimal_places=3, min_value=0, max_value=MAX_PRICE, **kwargs)


class PackageSerializer(serializers.ModelSerializer):
    """A package as staff see it (output); ``version`` is what an edit may carry back."""

    price = InCurrencyField("price")

    class Meta:
        model = Package
        fields = ["id", "name", "price", "currency", "daily_capacity", "active", "version", "created_at"]
        read_only_fields = fields


class PackageCreateInputSerializer(serializers.Serializer):
    """A new package. The defaults belong here, to create, and nowhere else."""

    name = serializers.CharField(max_length=200)
    price = price_input()
    currency = serializers.CharField(max_length=3, default="USD")
    daily_capacity = serializers.IntegerField(min_value=1, max_value=100_000, default=1)
    active = serializers.BooleanField(default=True)


class PackageUpdateInputSerializer(serializers.Serializer):
    """An edit: only the fields sent are written (no defaults, so PUT never resets an omitted field).

    PUT still needs ``name`` and ``price`` (as it always did); PATCH needs nothing.
    ``version``, when sent, must be the package's current one (409 ``version_conflict``).
    """

    name = serializers.CharField(max_length=200)
    price = price_input()
    currency = serializers.CharField(max_length=3, required=False)
    daily_capacity = serializers.IntegerField(min_value=1, max_value=100_000, required=False)
    active = serializers.BooleanField(required=False)
    version = serializers.IntegerField(min_value=1, max_value=2**31 - 1, required=False)


class PackageDeleteQueryInputSerializer(serializers.Serializer):
    version = serializers.IntegerField(min_value=1, max_value=2**31 - 1, required=False)


class PublicPackageSerializer(serializers.ModelSerializer):
    price = InCurrencyField("price")

    class Meta:
        model = Package
        fields = ["id", "name", "price", "currency", "daily_capacity"]


class CustomerSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    email = serializers.EmailField(max_length=254)


class StrictDateField(serializers.DateField):
    """ISO dates only; a bad date (2026-02-30) is a 400, never a 500."""

    def __init__(self, **kwargs):
        super().__init__(input_formats=["iso-8601"], **kwargs)


class CheckoutCreateInputSerializer(serializers.Serializer):
    package = serializers.IntegerField(min_value=1, max_value=2**63 - 1)
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


class AvailabilityQueryInputSerializer(serializers.Serializer):
    start = StrictDateField()
    end = StrictDateField()
    package = serializers.IntegerField(min_value=1, max_value=2**63 - 1, required=False)


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
        fields = [
            "id",
            "package",
            "date",
            "customer_name",
            "customer_email",
            "status",
            "hold_expires_at",
            "amount",
            "currency",
            "created_at",
            "confirmed_at",
            "cancelled_at",
            "refunded_at",
            "checkout",
        ]

    def get_checkout(self, booking) -> BookingCheckoutSerializer(allow_null=True):
        checkout = getattr(booking, "checkout", None)  # the reverse accessor raises an AttributeError subclass
        return BookingCheckoutSerializer(checkout).data if checkout else None


class BookingListQueryInputSerializer(serializers.Serializer):
    date = StrictDateField(required=False)
    status = serializers.ChoiceField(choices=Booking.Status.choices, required=False)
    package = serializers.IntegerField(min_value=1, max_value=2**63 - 1, required=False)
