"""Thin views: parse with an input serializer, call the manager, answer with an output serializer."""

from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework import status
from rest_framework.generics import ListAPIView
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api.idempotency import idempotent
from core.api.inputs import DeleteQueryInputSerializer
from core.api.lookup import get_for_tenant, valid_id, valid_uuid
from core.api.representation import represented, validated
from core.api.tenancy import TenantScopedMixin
from core.api.throttles import count_failure
from core.exceptions import DomainError
from promos import exceptions as errors
from promos.api import serializers as s
from promos.models import PromoCode, PromoUsage, RedemptionSession

# The paths take ids as <str:...> and check them here (core.api.lookup), so a malformed id
# answers this domain's promo_not_found / usage_not_found / session_not_found, not a bare 404.


# --- promo codes -------------------------------------------------------------------------------


class PromoCodeListView(TenantScopedMixin, ListAPIView):
    serializer_class = s.PromoCodeSerializer

    def get_queryset(self):
        return PromoCode.objects.for_tenant(self.tenant).order_by("code", "pk")

    @extend_schema(
        request=s.PromoCodeInputSerializer,
        responses={201: s.PromoCodeSerializer},
        examples=[
            OpenApiExample(
                "A fixed bonus, 100 uses",
                value={"code": "SPRING10", "bonus_type": "fixed", "bonus_value": "10.00", "total_usage_limit": 100},
                request_only=True,
            ),
            OpenApiExample(
                "15 %, at most 20.00, once per customer",
                value={
                    "code": "WELCOME15",
                    "bonus_type": "percentage",
                    "bonus_value": "15.00",
                    "max_bonus": "20.00",
                    "per_customer_limit": 1,
                },
                request_only=True,
            ),
        ],
    )
    @idempotent()
    def post(self, request, tenant):
        fields = dict(validated(s.PromoCodeInputSerializer, request.data))
        fields.pop("version", None)  # a new code has no version to be stale against
        promo = PromoCode.objects.create_code(tenant=self.tenant, **fields)
        return Response(represented(s.PromoCodeSerializer, promo), status=status.HTTP_201_CREATED)


class PromoCodeDetailView(TenantScopedMixin, APIView):
    def _get(self, pk):
        return get_for_tenant(PromoCode, self.tenant, errors.PromoNotFound, pk=pk)

    @extend_schema(responses={200: s.PromoCodeSerializer})
    def get(self, request, tenant, pk):
        return Response(represented(s.PromoCodeSerializer, self._get(pk)))

    def _update(self, request, pk, serializer):
        """PUT and PATCH: only the fields the body carries, through ``update_code`` under the row lock.

        An omitted field is never reset (the input serializer has no defaults), ``is_active``
        takes effect exactly as deactivate/activate do, and the ``version`` the body must carry
        makes the edit optimistic: 409 version_conflict when the code changed since it was read,
        so a body echoed from a stale read cannot write back what changed since (a deactivation).
        """
        current = self._get(pk)
        data = serializer(current, data=request.data)
        data.is_valid(raise_exception=True)
        fields = dict(data.validated_data)
        version = fields.pop("version")
        promo = PromoCode.objects.update_code(current.pk, tenant=self.tenant, version=version, **fields)
        return Response(represented(s.PromoCodeSerializer, promo))

    @extend_schema(request=s.PromoCodeEditInputSerializer, responses={200: s.PromoCodeSerializer})
    def put(self, request, tenant, pk):
        return self._update(request, pk, s.PromoCodeEditInputSerializer)

    @extend_schema(request=s.PromoCodePatchInputSerializer, responses={200: s.PromoCodeSerializer})
    def patch(self, request, tenant, pk):
        return self._update(request, pk, s.PromoCodePatchInputSerializer)

    @extend_schema(parameters=[DeleteQueryInputSerializer], responses={204: None})
    def delete(self, request, tenant, pk):
        pk = valid_id(pk, errors.PromoNotFound)
        query = validated(DeleteQueryInputSerializer, request.query_params)
        PromoCode.objects.delete_code(pk, tenant=self.tenant, version=query.get("version"))
        return Response(status=status.HTTP_204_NO_CONTENT)


class PromoCodeValidateView(TenantScopedMixin, APIView):
    """Preview: read-only, reserves nothing; refusals use the codes redeem would answer with."""

    @extend_schema(request=s.PromoCodeCheckInputSerializer, responses={200: s.PromoCodeValidationSerializer})
    def post(self, request, tenant):
        data = validated(s.PromoCodeCheckInputSerializer, request.data)
        try:
            promo, bonus = PromoCode.objects.validate(tenant=self.tenant, **data)
        except DomainError as refusal:
            if refusal.status_code == status.HTTP_400_BAD_REQUEST:
                raise
            reason = {"code": refusal.code, "message": refusal.render()}
            body = {"valid": False, "bonus_amount": None, "currency": None, "code": None, "reason": reason}
            return Response(represented(s.PromoCodeValidationSerializer, body))
        body = {"valid": True, "bonus_amount": bonus, "currency": promo.currency, "code": promo.code, "reason": None}
        return Response(represented(s.PromoCodeValidationSerializer, body))


class PromoCodeRedeemView(TenantScopedMixin, APIView):
    @extend_schema(
        request=s.PromoCodeRedeemInputSerializer,
        responses={201: s.PromoUsageSerializer},
    )
    @idempotent()
    def post(self, request, tenant):
        data = validated(s.PromoCodeRedeemInputSerializer, request.data)
        usage = PromoCode.objects.redeem(tenant=self.tenant, **data)
        return Response(represented(s.PromoUsageSerializer, usage), status=status.HTTP_201_CREATED)


class PromoCodeActivationView(TenantScopedMixin, APIView):
    active = False

    @extend_schema(request=None, responses={200: s.PromoCodeSerializer})
    @idempotent()
    def post(self, request, tenant, pk):
        promo = PromoCode.objects.set_active(valid_id(pk, errors.PromoNotFound), tenant=self.tenant, active=self.active)
        return Response(represented(s.PromoCodeSerializer, promo))


class PromoCodeDeactivateView(PromoCodeActivationView):
    """Deactivate: every reserve not committed when this commits is refused promo_inactive."""

    active = False


class PromoCodeActivateView(PromoCodeActivationView):
    active = True


# --- usages ------------------------------------------------------------------------------------


class PromoUsageListView(TenantScopedMixin, ListAPIView):
    serializer_class = s.PromoUsageSerializer

    def get_queryset(self):
        query = validated(s.PromoUsageListQueryInputSerializer, self.request.query_params)
        queryset = PromoUsage.objects.for_tenant(self.tenant).select_related("promo")
        if code := query.get("code"):
            queryset = queryset.filter(promo__code__iexact=code)
        if customer := query.get("customer"):
            queryset = queryset.filter(customer=customer)
        return queryset

    @extend_schema(parameters=[s.PromoUsageListQueryInputSerializer])
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


class PromoUsageVoidView(TenantScopedMixin, APIView):
    @extend_schema(request=None, responses={200: s.PromoUsageSerializer})
    @idempotent()
    def post(self, request, tenant, pk):
        usage = PromoUsage.objects.void(valid_id(pk, errors.UsageNotFound), tenant=self.tenant)
        return Response(represented(s.PromoUsageSerializer, usage))


# --- redemption sessions -----------------------------------------------------------------------


class RedemptionSessionListView(TenantScopedMixin, ListAPIView):
    serializer_class = s.RedemptionSessionSerializer

    def get_queryset(self):
        query = validated(s.RedemptionSessionListQueryInputSerializer, self.request.query_params)
        queryset = RedemptionSession.objects.for_tenant(self.tenant).with_effective_status()
        if wanted := query.get("status"):  # as the sessions read: one past its expiry is expired
            queryset = queryset.filter(effective_status=wanted)
        return queryset

    @extend_schema(parameters=[s.RedemptionSessionListQueryInputSerializer])
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    @extend_schema(
        request=s.RedemptionSessionCreateInputSerializer,
        responses={201: s.RedemptionSessionCreatedSerializer},
    )
    @idempotent(sealed=("approval_secret",))  # shown once: its record keeps it encrypted, for a replay
    def post(self, request, tenant):
        data = validated(s.RedemptionSessionCreateInputSerializer, request.data)
        session, secret = RedemptionSession.objects.create_session(tenant=self.tenant, **data)
        session.approval_secret = secret
        return Response(represented(s.RedemptionSessionCreatedSerializer, session), status=status.HTTP_201_CREATED)


class RedemptionSessionDetailView(TenantScopedMixin, APIView):
    @extend_schema(responses={200: s.RedemptionSessionSerializer})
    def get(self, request, tenant, session_id):
        sessions = RedemptionSession.objects.with_effective_status()
        session = get_for_tenant(sessions, self.tenant, errors.SessionNotFound, session_id=session_id)
        return Response(represented(s.RedemptionSessionSerializer, session))


class RedemptionSessionConsumeView(TenantScopedMixin, APIView):
    @extend_schema(
        request=s.RedemptionSessionConsumeInputSerializer,
        responses={200: s.RedemptionSessionConsumedSerializer},
    )
    @idempotent()
    def post(self, request, tenant, session_id):
        session_uuid = valid_uuid(session_id, errors.SessionNotFound)
        data = validated(s.RedemptionSessionConsumeInputSerializer, request.data)
        session = RedemptionSession.objects.consume(session_uuid, tenant=self.tenant, **data)
        body = {
            "session_id": session_uuid,
            "status": RedemptionSession.Status.USED,
            "used_amount": session.used_amount,
            "currency": session.currency,
        }
        return Response(represented(s.RedemptionSessionConsumedSerializer, body))


class RedemptionSessionCancelView(TenantScopedMixin, APIView):
    @extend_schema(request=None, responses={200: s.RedemptionSessionSerializer})
    @idempotent()
    def post(self, request, tenant, session_id):
        session = RedemptionSession.objects.cancel(valid_uuid(session_id, errors.SessionNotFound), tenant=self.tenant)
        return Response(represented(s.RedemptionSessionSerializer, session))


class RedemptionSessionAnswerView(APIView):
    """Public: the customer approves or rejects with the secret shown at creation."""

    permission_classes = []
    authentication_classes = []
    approve = True

    @extend_schema(
        request=s.RedemptionSessionAnswerInputSerializer,
        responses={200: s.RedemptionSessionSerializer},
    )
    @idempotent()
    def post(self, request, session_id):
        data = validated(s.RedemptionSessionAnswerInputSerializer, request.data)
        answer = RedemptionSession.objects.approve if self.approve else RedemptionSession.objects.reject
        try:
            session = answer(valid_uuid(session_id, errors.SessionNotFound), secret=data["approval_secret"])
        except errors.SessionNotFound as refusal:  # an unknown session or a wrong secret: a failed authentication
            count_failure(request)  # 429 once this address has guessed too often
            # Answered, not raised: under an Idempotency-Key the handler runs in a savepoint that a raised
            # refusal rolls back, taking the failure's count with it (a fresh key per guess went uncounted).
            return self.handle_exception(refusal)
        return Response(represented(s.RedemptionSessionSerializer, session))


class RedemptionSessionApproveView(RedemptionSessionAnswerView):
    approve = True


class RedemptionSessionRejectView(RedemptionSessionAnswerView):
    approve = False
