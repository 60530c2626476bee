"""Input and output shapes of the promos API: one input and one output serializer per operation."""

import re
from datetime import timedelta

from django.utils.translation import gettext_lazy as _
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from core.api.inputs import MAX_VERSION, POSITIVE_CENTS_PATTERN, OnlyVersionRequired, StrictDateTimeField, StrictInput
from promos.managers import PROMO_TERMS
from promos.models import SESSION_RECORD, USAGE_RECORD, PromoCode, PromoUsage, RedemptionSession
from promos.money import MAX_AMOUNT, parse_amount

CUSTOMER_MAX = 255
CODE_MAX = 64


@extend_schema_field({"type": "string", "format": "decimal", "pattern": r"^[0-9]+\.[0-9]{2}$", "example": "12.50"})
class AmountField(serializers.Field):
    """A money amount as a decimal string: > 0, at most 2 decimal places, at most 1,000,000.00.

    Anything else (a JSON number included) is 400 invalid_input on the field.
    """

    json_type = "string"
    request_pattern = POSITIVE_CENTS_PATTERN  # answers may carry 0.00 (a bonus capped to nothing)

    def to_internal_value(self, data):
        try:
            if not isinstance(data, str) or not re.fullmatch(POSITIVE_CENTS_PATTERN, data):
                raise ValueError("not an amount string")
            return parse_amount(data)
        except ValueError:
            message = _("Enter a positive amount with at most two decimal places, up to %(maximum)s.")
            raise serializers.ValidationError(str(message) % {"maximum": MAX_AMOUNT}, code="invalid")

    def to_representation(self, value):
        return None if value is None else f"{value:.2f}"


class CustomerField(serializers.CharField):
    def __init__(self, **kwargs):
        kwargs.setdefault("max_length", CUSTOMER_MAX)
        kwargs.setdefault("help_text", "The shop's identifier of the customer (id, e-mail, wallet address).")
        super().__init__(**kwargs)


# --- promo codes -------------------------------------------------------------------------------


class PromoCodeSerializer(serializers.ModelSerializer):
    """A promo code as the shop sees it; ``times_used`` is read-only."""

    bonus_value = AmountField()
    max_bonus = AmountField(required=False, allow_null=True)

    class Meta:
        model = PromoCode
        fields = [
            "id",
            *PROMO_TERMS,
            "times_used",
            "is_active",
            "version",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["id", "times_used", "version", "created_at", "updated_at"]


class PromoCodeInputSerializer(StrictInput):
    """A code's definition. On PUT and PATCH an omitted field is left as it is: defaults belong to create."""

    code = serializers.RegexField(r"^[A-Za-z0-9_-]+$", max_length=CODE_MAX)
    # DRF's default message quotes the input back; a lone surrogate in it cannot be encoded (500).
    bonus_type = serializers.ChoiceField(
        choices=PromoCode.BonusType.choices,
        error_messages={"invalid_choice": _("The bonus type must be fixed or percentage.")},
    )
    bonus_value = AmountField()
    max_bonus = AmountField(required=False, allow_null=True)
    starts_at = StrictDateTimeField(required=False, allow_null=True)
    ends_at = StrictDateTimeField(required=False, allow_null=True)
    total_usage_limit = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=MAX_VERSION)
    per_customer_limit = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=MAX_VERSION)
    # No default here: on PUT a default would re-activate a deactivated code (create uses the model's).
    is_active = serializers.BooleanField(required=False)
    # On create a code has no version to be stale against: accepted (a body echoed from a read) and ignored.
    version = serializers.IntegerField(required=False, min_value=1, max_value=MAX_VERSION, help_text="Ignored.")

    def validate(self, attrs):
        merged = {**self._current(), **attrs}
        if merged.get("bonus_type") == "percentage" and merged.get("bonus_value") and merged["bonus_value"] > 100:
            raise serializers.ValidationError({"bonus_value": _("A percentage cannot exceed 100.")})
        starts, ends = merged.get("starts_at"), merged.get("ends_at")
        if starts and ends and ends <= starts:
            raise serializers.ValidationError({"ends_at": _("The end must be after the start.")})
        return attrs

    def _current(self):
        instance = self.instance
        if instance is None:
            return {}
        return {name: getattr(instance, name) for name in ("bonus_type", "bonus_value", "starts_at", "ends_at")}


class PromoCodeEditInputSerializer(PromoCodeInputSerializer):
    """PUT: the code's whole definition, and the version it was read at.

    ``version`` is required: an edit built on a read is refused with 409 version_conflict when the
    code changed since (an edit, a deactivation), never written over it.
    """

    version = serializers.IntegerField(
        min_value=1,
        max_value=MAX_VERSION,
        help_text="The version this edit is based on; a stale one is refused with 409 version_conflict.",
    )


class PromoCodePatchInputSerializer(OnlyVersionRequired, PromoCodeEditInputSerializer):
    """PATCH: the fields to change, and the version they were read at (required, as on PUT)."""


class PromoCodeCheckInputSerializer(StrictInput):
    code = serializers.CharField(max_length=CODE_MAX, trim_whitespace=True)
    customer = CustomerField()
    amount = AmountField()


class PromoCodeRedeemInputSerializer(PromoCodeCheckInputSerializer):
    reference = serializers.CharField(max_length=255, required=False, allow_blank=True, default="")


class PromoUsageListQueryInputSerializer(StrictInput):
    code = serializers.CharField(max_length=CODE_MAX, required=False, help_text="Only this code's usages.")
    customer = CustomerField(required=False, help_text="Only this customer's usages.")


class PromoRefusalSerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()


class PromoCodeValidationSerializer(serializers.Serializer):
    valid = serializers.BooleanField()
    bonus_amount = AmountField(allow_null=True)
    code = serializers.CharField(allow_null=True)
    reason = PromoRefusalSerializer(allow_null=True)


class PromoUsageSerializer(serializers.ModelSerializer):
    usage_id = serializers.IntegerField(source="pk")
    code = serializers.CharField(source="promo.code")
    base_amount = AmountField()
    bonus_amount = AmountField()

    class Meta:
        model = PromoUsage
        fields = ["usage_id", "code", *USAGE_RECORD]


# --- redemption sessions -----------------------------------------------------------------------


class RedemptionSessionCreateInputSerializer(StrictInput):
    customer = CustomerField()
    max_amount = AmountField()
    expires_in = serializers.IntegerField(
        required=False, min_value=1, max_value=7 * 24 * 3600, help_text="Seconds until expiry (default 900)."
    )

    def validate_expires_in(self, value):
        return timedelta(seconds=value)


class RedemptionSessionListQueryInputSerializer(StrictInput):
    status = serializers.ChoiceField(choices=RedemptionSession.Status.choices, required=False)


class RedemptionSessionSerializer(serializers.ModelSerializer):
    max_amount = AmountField()
    used_amount = AmountField(allow_null=True)

    class Meta:
        model = RedemptionSession
        fields = ["session_id", *SESSION_RECORD]


class RedemptionSessionCreatedSerializer(RedemptionSessionSerializer):
    approval_secret = serializers.CharField(help_text="Shown once; give it to the customer to approve or reject.")

    class Meta(RedemptionSessionSerializer.Meta):
        fields = [*RedemptionSessionSerializer.Meta.fields, "approval_secret"]


class RedemptionSessionAnswerInputSerializer(StrictInput):
    approval_secret = serializers.CharField(max_length=200)


class RedemptionSessionConsumeInputSerializer(StrictInput):
    amount = AmountField()


class RedemptionSessionConsumedSerializer(serializers.Serializer):
    session_id = serializers.UUIDField()
    status = serializers.ChoiceField(choices=RedemptionSession.Status.choices)
    used_amount = AmountField()
