import functools
from datetime import timedelta

from drf_spectacular.utils import extend_schema
from rest_framework import generics, status
from rest_framework.response import Response
from rest_framework.views import APIView

from bookings.exceptions import PackageNotFound
from bookings.models import Package
from core.api.idempotency import idempotent, note_work
from core.api.lookup import get_for_tenant, valid_id
from core.api.representation import represented, validated
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
from proposals.services import confirm_proposal, reject_proposal, resume_confirmation


class ProposalListCreateView(TenantScopedMixin, generics.ListAPIView):
    """A chat session's proposals (``?session_id=`` required), and proposing a booking."""

    serializer_class = ProposalSerializer

    def get_queryset(self):
        query = validated(ProposalListQueryInputSerializer, self.request.query_params)
        return (
            Proposal.objects.for_tenant(self.tenant)
            .filter(session_id=query["session_id"])
            .with_effective_status()
            .order_by("-created_at", "-pk")
        )

    @extend_schema(parameters=[ProposalListQueryInputSerializer])
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    @extend_schema(request=ProposalCreateInputSerializer, responses={201: ProposalSerializer})
    @idempotent()
    def post(self, request, tenant):
        data = validated(ProposalCreateInputSerializer, request.data)
        package = get_for_tenant(Package.objects.active(), self.tenant, PackageNotFound, pk=data["package"])
        proposal = Proposal.objects.propose(
            tenant=self.tenant,
            session_id=data["session_id"],
            package=package,
            date=data["date"],
            customer_name=data["customer"]["name"],
            customer_email=data["customer"]["email"],
            expires_in=timedelta(seconds=data["expires_in"]),
        )
        return Response(represented(ProposalSerializer, proposal), status=status.HTTP_201_CREATED)


class ProposalDetailView(TenantScopedMixin, APIView):
    @extend_schema(responses=ProposalSerializer)
    def get(self, request, tenant, pk):
        proposal = get_for_tenant(Proposal.objects.with_effective_status(), self.tenant, ProposalNotFound, pk=pk)
        return Response(represented(ProposalSerializer, proposal))


class ProposalConfirmView(TenantScopedMixin, APIView):
    """Confirm a proposal: books the date (capacity honoured) and opens the payment checkout."""

    @extend_schema(request=ProposalDecisionInputSerializer, responses=ProposalConfirmedSerializer)
    @idempotent(two_phase=True)
    def post(self, request, tenant, pk):
        data = validated(ProposalDecisionInputSerializer, request.data)
        proposal, booking = confirm_proposal(
            valid_id(pk, ProposalNotFound),
            tenant=self.tenant,
            session_id=data["session_id"],
            note=functools.partial(note_work, request),
        )
        return self.confirmed(proposal, booking)

    def resume(self, request, booking_id, tenant, pk):
        """The retry of a request that committed its booking, then died or failed (its Idempotency-Key): that
        booking; None (confirm anew) when the confirmation was undone since."""
        resumed = resume_confirmation(valid_id(pk, ProposalNotFound), booking_id)
        return None if resumed is None else self.confirmed(*resumed)

    def confirmed(self, proposal, booking):
        body = {"proposal": proposal, "booking": booking, "checkout": booking.checkout}
        return Response(represented(ProposalConfirmedSerializer, body))


class ProposalRejectView(TenantScopedMixin, APIView):
    @extend_schema(request=ProposalDecisionInputSerializer, responses=ProposalSerializer)
    @idempotent()
    def post(self, request, tenant, pk):
        data = validated(ProposalDecisionInputSerializer, request.data)
        proposal = reject_proposal(valid_id(pk, ProposalNotFound), tenant=self.tenant, session_id=data["session_id"])
        return Response(represented(ProposalSerializer, proposal))
