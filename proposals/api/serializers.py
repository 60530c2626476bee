from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from bookings.api.serializers import BookingSummarySerializer, CheckoutSerializer, CustomerSerializer
from core.api.inputs import MAX_ID, StrictDateField, StrictInput
from proposals.models import PROPOSAL_RECORD, Proposal

MAX_EXPIRES_IN = 7 * 24 * 3600
SESSION_ID = dict(max_length=128, allow_blank=False, trim_whitespace=False)


class ProposalCreateInputSerializer(StrictInput):
    session_id = serializers.CharField(**SESSION_ID)
    package = serializers.IntegerField(min_value=1, max_value=MAX_ID)
    date = StrictDateField()
    customer = CustomerSerializer()
    expires_in = serializers.IntegerField(
        min_value=1, max_value=MAX_EXPIRES_IN, default=900, help_text="Seconds until the proposal expires."
    )


class ProposalDecisionInputSerializer(StrictInput):
    session_id = serializers.CharField(**SESSION_ID)


class ProposalListQueryInputSerializer(StrictInput):
    session_id = serializers.CharField(**SESSION_ID)


class ProposalSerializer(serializers.ModelSerializer):
    """A proposal; ``status`` reads ``expired`` as soon as a pending proposal's expiry passes."""

    status = serializers.SerializerMethodField()
    customer = serializers.SerializerMethodField()

    class Meta:
        model = Proposal
        fields = ["id", "session_id", "package", "date", "customer", *PROPOSAL_RECORD, "booking"]

    @extend_schema_field(serializers.ChoiceField(choices=Proposal.Status.choices))
    def get_status(self, proposal):
        return getattr(proposal, "effective_status", proposal.status)

    def get_customer(self, proposal) -> CustomerSerializer:
        return {"name": proposal.customer_name, "email": proposal.customer_email}


class ProposalConfirmedSerializer(serializers.Serializer):
    proposal = ProposalSerializer()
    booking = BookingSummarySerializer()
    checkout = CheckoutSerializer()
