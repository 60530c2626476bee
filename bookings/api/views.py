import functools

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from bookings.api.serializers import (
    AvailabilityQueryInputSerializer,
    AvailabilitySerializer,
    BookingCancelInputSerializer,
    BookingListQueryInputSerializer,
    BookingSerializer,
    CheckoutCreatedSerializer,
    CheckoutCreateInputSerializer,
    PackageCreateInputSerializer,
    PackagePatchInputSerializer,
    PackageSerializer,
    PackageUpdateInputSerializer,
    PublicPackageSerializer,
)
from bookings.exceptions import (
    BookingNotFound,
    DateRangeInvalid,
    MalformedEvent,
    PackageNotFound,
)
from bookings.models import Booking, Package
from bookings.selectors import places_left
from bookings.services import cancel_booking, receive_payment_event, resume_checkout, start_checkout
from core.api.idempotency import idempotent, note_work
from core.api.inputs import DeleteQueryInputSerializer
from core.api.lookup import get_for_tenant, valid_id
from core.api.representation import represented, validated
from core.api.tenancy import PublicTenantMixin, TenantScopedMixin
from core.api.throttles import CheckoutAddressThrottle, CheckoutEmailThrottle

MAX_AVAILABILITY_DAYS = 366


# --- public -----------------------------------------------------------------


class PublicPackageListView(PublicTenantMixin, generics.ListAPIView):
    """Active packages a customer can book."""

    serializer_class = PublicPackageSerializer
    pagination_class = None

    def get_queryset(self):
        return Package.objects.for_tenant(self.tenant).active().order_by("name", "pk")


class AvailabilityView(PublicTenantMixin, APIView):
    """Places left per date (confirmed bookings and live holds count; expired holds do not)."""

    @extend_schema(
        parameters=[AvailabilityQueryInputSerializer],
        responses=AvailabilitySerializer(many=True),
    )
    def get(self, request, tenant):
        query = validated(AvailabilityQueryInputSerializer, request.query_params)
        start, end = query["start"], query["end"]
        if end < start or (end - start).days + 1 > MAX_AVAILABILITY_DAYS:
            raise DateRangeInvalid(days=MAX_AVAILABILITY_DAYS)
        days = places_left(self.tenant, start, end, package_id=query.get("package"))
        return Response(AvailabilitySerializer(days, many=True).data)


class CheckoutCreateView(PublicTenantMixin, APIView):
    """Hold a date and open a payment checkout for it."""

    throttle_classes = [CheckoutAddressThrottle, CheckoutEmailThrottle]

    def get_throttles(self):
        # only a checkout counts: an OPTIONS, a HEAD or a stray GET (405) used up a customer's budget
        return super().get_throttles() if self.request.method == "POST" else []

    @extend_schema(request=CheckoutCreateInputSerializer, responses={201: CheckoutCreatedSerializer})
    @idempotent(two_phase=True)
    def post(self, request, tenant):
        data = validated(CheckoutCreateInputSerializer, request.data)
        booking = start_checkout(
            tenant=self.tenant,
            package_id=data["package"],
            date=data["date"],
            customer_name=data["customer"]["name"],
            customer_email=data["customer"]["email"],
            note=functools.partial(note_work, request),
        )
        return self.created(booking)

    def resume(self, request, booking_id, tenant):
        """The retry of a request that committed its hold, then died or failed (its Idempotency-Key): that
        booking; None (hold anew) when the hold was undone before its checkout opened."""
        booking = resume_checkout(booking_id)
        return None if booking is None else self.created(booking)

    def created(self, booking):
        body = represented(CheckoutCreatedSerializer, {"booking": booking, "checkout": booking.checkout})
        return Response(body, status=status.HTTP_201_CREATED)


WEBHOOK_EVENT = {
    "type": "object",
    "description": "A Stripe-shaped event: checkout.session.completed, .expired, .async_payment_succeeded, "
    ".async_payment_failed; refund.created, refund.updated, refund.failed, charge.refund.updated; "
    "charge.dispute.created, .updated, .closed, .funds_withdrawn, .funds_reinstated. Any other type is "
    "stored and answered ignored_type. It is verified against the exact bytes sent, so a client must "
    "sign what it sends.",
    "properties": {
        "id": {"type": "string"},
        "type": {"type": "string"},
        "data": {"type": "object", "properties": {"object": {"type": "object"}}, "required": ["object"]},
    },
    "required": ["id", "type", "data"],
}


class WebhookReceivedSerializer(serializers.Serializer):
    received = serializers.BooleanField()
    event = serializers.CharField(help_text="The event's id.")
    duplicate = serializers.BooleanField(help_text="True when this event was processed before (nothing done again).")
    result = serializers.CharField(help_text="What the event did, e.g. confirmed, ignored.")


class PaymentWebhookView(APIView):
    """Provider events, Stripe-shaped and Stripe-signed. 200 for processed and duplicate events."""

    authentication_classes = []
    permission_classes = []

    @extend_schema(
        request={"application/json": WEBHOOK_EVENT},
        parameters=[
            OpenApiParameter(
                "Stripe-Signature",
                str,
                OpenApiParameter.HEADER,
                required=True,
                description='`t=<unix time>,v1=<HMAC-SHA256 of "t.body">` with the webhook secret.',
            )
        ],
        responses={200: WebhookReceivedSerializer},
    )
    def post(self, request):
        try:
            payload = request.body
        except Exception:  # noqa: BLE001 - an unreadable body is a malformed event, not a 500
            raise MalformedEvent()
        result = receive_payment_event(payload, request.headers.get("Stripe-Signature"))
        return Response(
            {"received": True, "event": result.event_id, "duplicate": result.duplicate, "result": result.result}
        )


# --- staff ------------------------------------------------------------------


class PackageListCreateView(TenantScopedMixin, generics.ListAPIView):
    serializer_class = PackageSerializer

    def get_queryset(self):
        return Package.objects.for_tenant(self.tenant).order_by("name", "pk")

    @extend_schema(request=PackageCreateInputSerializer, responses={201: PackageSerializer})
    @idempotent()
    def post(self, request, *args, **kwargs):
        data = validated(PackageCreateInputSerializer, request.data)
        package = Package.objects.create_package(tenant=self.tenant, **data)
        return Response(represented(PackageSerializer, package), status=status.HTTP_201_CREATED)


class PackageDetailView(TenantScopedMixin, generics.RetrieveAPIView):
    """One package; PUT and PATCH write only the fields sent, DELETE refuses a package in use.

    Edits and deletes take the package lock exclusive (Package.objects.edit_package /
    delete_package): 409 ``capacity_below_occupancy``, ``package_in_use``,
    ``version_conflict`` (when the ``version`` sent, in the body or DELETE's query, is stale),
    ``resource_locked``.
    """

    serializer_class = PackageSerializer

    def get_object(self):
        return get_for_tenant(Package, self.tenant, PackageNotFound, pk=self.kwargs["pk"])

    def _edit(self, request, pk, *, partial):
        pk = valid_id(pk, PackageNotFound)
        changes = validated(PackagePatchInputSerializer if partial else PackageUpdateInputSerializer, request.data)
        version = changes.pop("version", None)
        package = Package.objects.edit_package(pk, tenant=self.tenant, version=version, **changes)
        return Response(represented(PackageSerializer, package))

    @extend_schema(request=PackageUpdateInputSerializer, responses=PackageSerializer)
    def put(self, request, tenant, pk):
        return self._edit(request, pk, partial=False)

    @extend_schema(request=PackagePatchInputSerializer, responses=PackageSerializer)
    def patch(self, request, tenant, pk):
        return self._edit(request, pk, partial=True)

    @extend_schema(parameters=[DeleteQueryInputSerializer], responses={204: None})
    def delete(self, request, tenant, pk):
        pk = valid_id(pk, PackageNotFound)
        query = validated(DeleteQueryInputSerializer, request.query_params)
        Package.objects.delete_package(pk, tenant=self.tenant, version=query.get("version"))
        return Response(status=status.HTTP_204_NO_CONTENT)


class BookingListView(TenantScopedMixin, generics.ListAPIView):
    serializer_class = BookingSerializer

    @extend_schema(parameters=[BookingListQueryInputSerializer])
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    def get_queryset(self):
        query = validated(BookingListQueryInputSerializer, self.request.query_params)
        bookings = Booking.objects.for_tenant(self.tenant).select_related("checkout").order_by("date", "pk")
        filters = {key: value for key, value in query.items()}
        if "package" in filters:
            filters["package_id"] = filters.pop("package")
        return bookings.filter(**filters)


class BookingDetailView(TenantScopedMixin, generics.RetrieveAPIView):
    serializer_class = BookingSerializer

    def get_object(self):
        return get_for_tenant(
            Booking.objects.select_related("checkout"), self.tenant, BookingNotFound, pk=self.kwargs["pk"]
        )


class BookingCancelView(TenantScopedMixin, APIView):
    """Cancel a held or confirmed booking; a paid one is refunded."""

    @extend_schema(request=BookingCancelInputSerializer, responses=BookingSerializer)
    @idempotent(two_phase=True)
    def post(self, request, tenant, pk):
        data = validated(BookingCancelInputSerializer, request.data)
        booking = cancel_booking(
            valid_id(pk, BookingNotFound),
            tenant=self.tenant,
            version=data.get("version"),
            note=functools.partial(note_work, request),
        )
        return self.resume(request, booking.pk, tenant, pk)

    def resume(self, request, booking_id, tenant, pk):
        """The booking as it stands (also the retry of a request that died after its cancellation committed:
        a refund it owed and never asked for is retry_refunds' to ask)."""
        booking = Booking.objects.select_related("checkout").get(pk=booking_id)
        return Response(represented(BookingSerializer, booking))
