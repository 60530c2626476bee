"""Input and output shapes of the promos API: one input and one output serializer per operation."""

import re
from datetime import timedelta

from django.utils.translation import gettext_lazy as _
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from core.api.inputs import (
    MAX_VERSION,
    POSITIVE_AMOUNT_PATTERN,
    CurrencyField,
    InCurrencyField,
    OnlyVersionRequired,
    StrictDateTimeField,
    StrictInput,
)
from promos.managers import PROMO_TERMS
from promos.models import SESSION_RECORD, USAGE_RECORD, PromoCode, PromoUsage, RedemptionSession
from promos.money import parse_amount, parse_percentage, written_bonus_value, written_maximum

CUSTOMER_MAX = 255
CODE_MAX = 64


# An amount as answered: exactly its currency's places ("12.50" USD, "1500" JPY, "1.250" KWD).
AMOUNT_OUT = {"type": "string", "format": "decimal", "pattern": r"^[0-9]+(\.[0-9]{1,3})?$", "example": "12.50"}


@extend_schema_field(AMOUNT_OUT)
class AmountField(serializers.Field):
    """A money amount as sent: a decimal string, > 0, at most 3 decimal places, at most 99,999,999.

    Anything else (a JSON number included) is 400 invalid_input on the field. The currency's own
    places and ceiling are the manager's to judge, against the code's or session's currency (400
    ``amount_precision``: no cents in JPY; 400 ``invalid_amount`` above 999999.99 USD, say: what a
    card processor charges at once). Input only: answers use ``InCurrencyField``.
    """

    json_type = "string"
    request_pattern = POSITIVE_AMOUNT_PATTERN

    def to_internal_value(self, data):
        try:
            if not isinstance(data, str) or not re.fullmatch(POSITIVE_AMOUNT_PATTERN, data):
                raise ValueError("not an amount string")
            return parse_amount(data, currency=None)
        except ValueError:
            message = _("Enter a positive amount with at most three decimal places, up to %(maximum)s.")
            raise serializers.ValidationError(str(message) % {"maximum": written_maximum(None)}, code="invalid")

    def to_representation(self, value):
        raise NotImplementedError("answers write amounts with InCurrencyField")


# Written with the currency's own places, up to 4 (CLF, UYW: the 4th is always 0), as InCurrencyField's answers.
@extend_schema_field({**AMOUNT_OUT, "pattern": r"^[0-9]+(\.[0-9]{1,4})?$", "readOnly": True})
class BonusValueField(serializers.Field):
    """A code's ``bonus_value``: an amount in its currency (fixed) or a rate with two places (percentage)."""

    def __init__(self, **kwargs):
        super().__init__(source="*", read_only=True, **kwargs)

    def to_representation(self, promo):
        return written_bonus_value(promo)


class CustomerField(serializers.CharField):
    def __init__(self, **kwargs):
        kwargs.setdefault("max_length", CUSTOMER_MAX)
        kwargs.setdefault("help_text", "The shop's identifier of the customer (id, e-mail, wallet address).")
        super().__init__(**kwargs)


# --- promo codes -------------------------------------------------------------------------------


class PromoCodeSerializer(serializers.ModelSerializer):
    """A promo code as the shop sees it; ``times_used`` is read-only. Amounts have the currency's places."""

    bonus_value = BonusValueField()
    max_bonus = InCurrencyField("max_bonus", allow_null=True)

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
    # A new code without one is in USD; on PUT and PATCH an omitted currency is left as it is.
    currency = CurrencyField(required=False, help_text="ISO 4217; USD when a new code has none.")
    bonus_value = AmountField(
        help_text="An amount in the code's currency (fixed), or a percentage up to 100 with two places."
    )
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
        if merged.get("bonus_type") == "percentage" and merged.get("bonus_value"):
            if merged["bonus_value"] > 100:
                raise serializers.ValidationError({"bonus_value": _("A percentage cannot exceed 100.")})
            try:
                parse_percentage(merged["bonus_value"])
            except ValueError:
                message = _("A percentage has at most two decimal places.")
                raise serializers.ValidationError({"bonus_value": message})
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
    currency = CurrencyField(
        required=False, help_text="The amount's currency; when given, it must be the code's (400 currency_mismatch)."
    )


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
    bonus_amount = InCurrencyField("bonus_amount", allow_null=True)
    currency = serializers.CharField(allow_null=True, help_text="The code's currency (null when refused).")
    code = serializers.CharField(allow_null=True)
    reason = PromoRefusalSerializer(allow_null=True)


class PromoUsageSerializer(serializers.ModelSerializer):
    usage_id = serializers.IntegerField(source="pk")
    code = serializers.CharField(source="promo.code")
    base_amount = InCurrencyField("base_amount")
    bonus_amount = InCurrencyField("bonus_amount")

    class Meta:
        model = PromoUsage
        fields = ["usage_id", "code", *USAGE_RECORD]


# --- redemption sessions -----------------------------------------------------------------------


class RedemptionSessionCreateInputSerializer(StrictInput):
    customer = CustomerField()
    max_amount = AmountField()
    currency = CurrencyField(required=False, help_text="ISO 4217 (default USD); consumes are in it.")
    expires_in = serializers.IntegerField(
        required=False, min_value=1, max_value=7 * 24 * 3600, help_text="Seconds until expiry (default 900)."
    )

    def validate_expires_in(self, value):
        return timedelta(seconds=value)


class RedemptionSessionListQueryInputSerializer(StrictInput):
    status = serializers.ChoiceField(choices=RedemptionSession.Status.choices, required=False)


class RedemptionSessionSerializer(serializers.ModelSerializer):
    """A session; ``status`` reads ``expired`` as soon as a pending or approved session's expiry passes."""

    max_amount = InCurrencyField("max_amount")
    used_amount = InCurrencyField("used_amount", allow_null=True)
    status = serializers.SerializerMethodField()

    class Meta:
        model = RedemptionSession
        fields = ["session_id", *SESSION_RECORD]

    @extend_schema_field(serializers.ChoiceField(choices=RedemptionSession.Status.choices))
    def get_status(self, session):
        return getattr(session, "effective_status", session.status)


class RedemptionSessionCreatedSerializer(RedemptionSessionSerializer):
    approval_secret = serializers.CharField(help_text="Shown once; give it to the customer to approve or reject.")

    class Meta(RedemptionSessionSerializer.Meta):
        fields = [*RedemptionSessionSerializer.Meta.fields, "approval_secret"]


class RedemptionSessionAnswerInputSerializer(StrictInput):
    approval_secret = serializers.CharField(max_length=200)


class RedemptionSessionConsumeInputSerializer(StrictInput):
    amount = AmountField()
    currency = CurrencyField(
        required=False,
        help_text="The amount's currency; when given, it must be the session's (400 currency_mismatch).",
    )


class RedemptionSessionConsumedSerializer(serializers.Serializer):
    session_id = serializers.UUIDField()
    status = serializers.ChoiceField(choices=RedemptionSession.Status.choices)
    used_amount = InCurrencyField("used_amount")
    currency = serializers.CharField()
