from datetime import timedelta

from drf_spectacular.utils import extend_schema
from rest_framework import generics, status
from rest_framework.response import Response
from rest_framework.views import APIView

from bookings.exceptions import PackageNotFound
from bookings.models import Package
from core.api.idempotency import idempotent
from core.api.tenancy import TenantScopedMixin
from proposals.api.serializers import (
    ProposalConfirmedSerializer,
    ProposalCreateInputSerializer,
    ProposalDecisionInputSerializer,
    ProposalListQueryInputSerializer,
    ProposalSerializer,
)
from proposals.exceptions import ProposalNotFound
from proposals.models import Proposal
from proposals.services import confirm_proposal, reject_proposal

MAX_ID = 2**63 - 1


def _proposal_id(pk):
    if pk > MAX_ID:  # a malformed id is simply not found
        raise ProposalNotFound()
    return pk


class ProposalListCreateView(TenantScopedMixin, generics.ListAPIView):
    """A chat session's proposals (``?session_id=`` required), and proposing a booking."""

    serializer_class = ProposalSerializer

    def get_queryset(self):
        query = ProposalListQueryInputSerializer(data=self.request.query_params)
        query.is_valid(raise_exception=True)
        return (
            Proposal.objects.for_tenant(self.tenant)
            .filter(session_id=query.validated_data["session_id"])
            .with_effective_status()
            .order_by("-created_at", "-pk")
        )

    @extend_schema(parameters=[ProposalListQueryInputSerializer])
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    @extend_schema(request=ProposalCreateInputSerializer, responses={201: ProposalSerializer})
    @idempotent()
    def post(self, request, tenant):
        data = ProposalCreateInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        package = Package.objects.for_tenant(self.tenant).active().filter(pk=data.validated_data["package"]).first()
        if package is None:
            raise PackageNotFound()
        proposal = Proposal.objects.propose(
            tenant=self.tenant,
            session_id=data.validated_data["session_id"],
            package=package,
            date=data.validated_data["date"],
            customer_name=data.validated_data["customer"]["name"],
            customer_email=data.validated_data["customer"]["email"],
            expires_in=timedelta(seconds=data.validated_data["expires_in"]),
        )
        return Response(ProposalSerializer(proposal).data, status=status.HTTP_201_CREATED)


class ProposalDetailView(TenantScopedMixin, APIView):
    @extend_schema(responses=ProposalSerializer)
    def get(self, request, tenant, pk):
        proposal = Proposal.objects.for_tenant(self.tenant).with_effective_status().filter(pk=_proposal_id(pk)).first()
        if proposal is None:
            raise ProposalNotFound()
        return Response(ProposalSerializer(proposal).data)


class ProposalConfirmView(TenantScopedMixin, APIView):
    """Confirm a proposal: books the date (capacity honoured) and opens the payment checkout."""

    @extend_schema(request=ProposalDecisionInputSerializer, responses=ProposalConfirmedSerializer)
    @idempotent(two_phase=True)
    def post(self, request, tenant, pk):
        data = ProposalDecisionInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        proposal, booking = confirm_proposal(
            _proposal_id(pk), tenant=self.tenant, session_id=data.validated_data["session_id"]
        )
        proposal = Proposal.objects.with_effective_status().get(pk=proposal.pk)
        body = {"proposal": proposal, "booking": booking, "checkout": booking.checkout}
        return Response(ProposalConfirmedSerializer(body).data)


class ProposalRejectView(TenantScopedMixin, APIView):
    @extend_schema(request=ProposalDecisionInputSerializer, responses=ProposalSerializer)
    @idempotent()
    def post(self, request, tenant, pk):
        data = ProposalDecisionInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        proposal = reject_proposal(_proposal_id(pk), tenant=self.tenant, session_id=data.validated_data["session_id"])
        return Response(ProposalSerializer(proposal).data)
